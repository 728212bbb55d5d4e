"""Hybrid retrieval beats each half on a small labelled set: exact codes that vectors miss, and
paraphrases that full-text search misses."""

import pytest

from documents.embedding import encode
from documents.search import search, text_search, vector_search
from tests.conftest import make_collection, make_user

pytestmark = pytest.mark.django_db

# A rare word buried in a long passage on another topic, among short notes full of look-alike
# words: the vector of the bare word lands on the look-alikes; only full text matches it exactly.
LOOK_ALIKES = ["Zyxoqual", "Zyxaquil", "Zoxyquil", "Zyxoquel", "Zyxequil", "Zixoquil", "Zyxoquin", "Zyxuquil"]
CODES = {f"note-{i}.txt": f"{word} and {word}s: notes on the {word} family." for i, word in enumerate(LOOK_ALIKES)}
CODES["plants.txt"] = (
    "Office plants need light and water. The ficus near the window is watered on Mondays, the ferns on "
    "Thursdays. The facilities team keeps the Zyxoquil fertiliser in the second cupboard. Succulents need "
    "little water and should be kept away from the radiators during the winter months."
)
PARAPHRASE = {
    "fleet.txt": "Every automobile in the fleet must be serviced once every twelve months at an approved garage.",
    "kitchen.txt": "The kitchen dishwasher runs its cleaning cycle at night after the staff have left.",
    "badges.txt": "Visitor badges are printed at reception and returned at the end of the day.",
}
LABELLED = [
    ("Zyxoquil", "Office plants need light"),  # exact keyword: only full text pins it down
    ("How often do our cars need maintenance?", "Every automobile"),  # no shared words: only vectors
]


@pytest.fixture
def reader(db, tmp_path):
    owner = make_user("librarian")
    make_collection("labelled", owner, {**CODES, **PARAPHRASE}, tmp_path)
    return owner


def found(hits, expected: str) -> bool:
    return any(hit.text.startswith(expected) for hit in hits)


def test_it_finds_exact_codes_and_paraphrases_where_each_half_alone_fails(reader):
    (code, code_answer), (paraphrase, paraphrase_answer) = LABELLED
    code_vector, paraphrase_vector = encode([code, paraphrase])

    assert found(search(reader, code, code_vector, 5), code_answer)
    assert found(search(reader, paraphrase, paraphrase_vector, 5), paraphrase_answer)

    assert not found(vector_search(reader, code_vector, 5), code_answer)  # vectors alone miss the code
    assert not found(text_search(reader, paraphrase, paraphrase_vector, 5), paraphrase_answer)  # words alone miss
    assert found(text_search(reader, code, code_vector, 5), code_answer)
    assert found(vector_search(reader, paraphrase_vector, 5), paraphrase_answer)
