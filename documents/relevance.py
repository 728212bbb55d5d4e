"""Can the retrieved passages answer the question? The "not found" gate, calibrated on labelled sets.

The nearest chunks always exist, so their presence says nothing, and cosine similarity alone
separates poorly: with a fixed 0.2 threshold, 1 of 40 out-of-corpus questions over the Python
documentation were answered "not found" (bench/RESULTS.md, "Issue 13"). Out-of-corpus questions
are about something the documents never mention, and that shows in the question's words:

* a word of the question that no readable chunk contains and that is rare in English
  (``tomllib``, ``mmap``, ``Zendesk``: a name, not a paraphrase) — looked up in ``wordfreq``;
* or much of the question's weight on such unseen words (each word weighted by its IDF among
  the chunks the user may read, so "how", "use" or "file" weigh little), once there are enough
  chunks for a missing everyday word to mean something;
* or nothing close: no passage with a high cosine similarity and no passage holding a good share
  of the question's weighted words.

``manage.py eval`` measures the gate on a labelled set; its settings are how an operator tunes it
for a corpus (docs/configuration.md).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.db import connection

from . import embedding
from .search import READABLE, Hit, capped_query, collection_ids, search

# A term's document frequency is counted up to this many chunks: rarer terms are what matter, and
# counting a very common word exactly would read thousands of rows per question.
DF_CAP = 1000
# What the English parser leaves of "doesn't", "isn't"...: not stop words to Postgres, not topics.
CONTRACTIONS = "aren couldn didn doesn don hadn hasn haven isn mustn needn shouldn wasn weren won wouldn".split()
_WORDS = re.compile(r"\w[\w'-]*")
_DOTTED = re.compile(r"(?<=\w)\.(?=[^\W\d])")

# The question's words as English stems (stop words and contractions left out), each with a word
# it came from, how many readable chunks contain it (up to DF_CAP), which retrieved chunks do, and
# the number of readable chunks. A stem is matched as one quoted lexeme (no parsing or stemming
# again). Hyphenated words are left out as a whole: the parser also emits their parts.
TERMS = (
    "WITH"
    + READABLE
    + r""",
    terms AS (
        SELECT term, min(word) AS word,
               ('''' || replace(replace(term, '\', '\\'), '''', '''''') || '''')::tsquery AS query
        FROM unnest(%(words)s::text[]) AS word, unnest(tsvector_to_array(to_tsvector('english', word))) AS term
        WHERE term NOT LIKE '%%-%%' AND term <> ALL(%(ignored)s)
        GROUP BY term
    )
SELECT t.term, t.word,
       (SELECT count(*) FROM (
            SELECT 1 FROM documents_chunk ch
            WHERE ch.search_vector @@ t.query AND ch.document_id IN (SELECT id FROM readable) LIMIT %(cap)s
       ) capped) AS df,
       ARRAY(SELECT ch.id FROM documents_chunk ch WHERE ch.id = ANY(%(hits)s) AND ch.search_vector @@ t.query),
       (SELECT coalesce(sum(d.chunks_total), 0) FROM documents_document d WHERE d.id IN (SELECT id FROM readable))
FROM terms t ORDER BY t.term"""
)


@dataclass(frozen=True)
class Term:
    stem: str
    word: str  # a word of the question it came from
    df: int  # readable chunks containing it (up to DF_CAP)
    in_hits: frozenset[int]  # the retrieved chunks containing it


@dataclass(frozen=True)
class Evidence:
    """What the gate decides on."""

    best_similarity: float  # the highest cosine similarity of a retrieved passage to the question
    coverage: float  # the highest IDF-weighted share of the question's terms one passage holds
    unseen: float  # the IDF-weighted share of the question's terms no readable chunk holds
    unknown: tuple[str, ...] = ()  # unseen words that are rare in English too
    terms: int = 0
    chunks: int = 0  # readable chunks: in a handful, most words are unseen and that means nothing

    def describe(self) -> str:
        unknown = f", unknown {', '.join(self.unknown)}" if self.unknown else ""
        return (
            f"similarity {self.best_similarity:.2f}, coverage {self.coverage:.2f}, "
            f"unseen {self.unseen:.2f} of {self.terms} terms{unknown}"
        )


@dataclass(frozen=True)
class Retrieval:
    hits: list[Hit]
    evidence: Evidence
    verdict: str  # ANSWER, UNSURE (only loosely related: said so, and quoted) or NOT_FOUND

    @property
    def relevant(self) -> bool:
        """False: answer "not found" rather than hand the model these passages."""
        return self.verdict != NOT_FOUND


def retrieve(
    user, query: str, vector: list[float], *, k: int | None = None, collections: Sequence[int] | None = None
) -> Retrieval:
    """The best chunks for ``query`` that ``user`` may read, and whether they can answer it."""
    hits = search(user, query, vector, k, collections=collections)
    evidence = gather_evidence(user, query, hits, collections)
    return Retrieval(hits, evidence, judge(evidence))


ANSWER, UNSURE, NOT_FOUND = "answer", "unsure", "not_found"


def judge(evidence: Evidence) -> str:
    """``not_found`` for what the documents never mention (a rare name no readable chunk holds,
    much of the question's weight unseen, or nothing close at all); ``answer`` when a passage is
    close in meaning, or holds most of the question's words and is not far in meaning; ``unsure``
    in between: the closest passages are shown, with a word that they may not answer."""
    if evidence.unknown:
        return NOT_FOUND
    # Among a handful of chunks most words are missing, and that means nothing.
    unseen = evidence.unseen if evidence.chunks >= settings.RELEVANCE_UNSEEN_MIN_CHUNKS else 0.0
    if unseen >= settings.RELEVANCE_MAX_UNSEEN:
        return NOT_FOUND
    if (
        evidence.best_similarity < settings.RELEVANCE_UNSURE_SIMILARITY
        and evidence.coverage < settings.RELEVANCE_UNSURE_COVERAGE
    ):
        return NOT_FOUND
    if evidence.best_similarity >= settings.RELEVANCE_MIN_SIMILARITY or (
        evidence.coverage >= settings.RELEVANCE_MIN_COVERAGE
        and evidence.best_similarity >= settings.RELEVANCE_COVERAGE_MIN_SIMILARITY
        and unseen <= settings.RELEVANCE_COVERAGE_MAX_UNSEEN
    ):
        return ANSWER
    return UNSURE


def gather_evidence(user, query: str, hits: list[Hit], collections: Sequence[int] | None) -> Evidence:
    best = max((hit.similarity for hit in hits), default=0.0)
    hit_ids = [hit.chunk_id for hit in hits]
    found, total = query_terms(user, query, hit_ids, collections) if hits else ([], 0)
    terms = [term for term in recover_unseen(found, hits) if not _paraphrase(term)]
    if not terms:  # nothing retrieved, or only stop words: similarity alone decides
        return Evidence(best, 0.0, 0.0, chunks=total)
    weights = {term.stem: math.log((total + 1) / (term.df + 0.5)) + 1 for term in terms}
    whole = sum(weights.values())
    held = [sum(weights[t.stem] for t in terms if chunk in t.in_hits) for chunk in hit_ids]
    unseen = [term for term in terms if term.df == 0]
    unseen_weight = sum(weights[t.stem] for t in unseen)
    # Among a handful of chunks most words are missing and that means nothing: coverage is then
    # measured against the words the chunks know.
    known = whole if total >= settings.RELEVANCE_UNSEEN_MIN_CHUNKS else whole - unseen_weight
    return Evidence(
        best_similarity=best,
        coverage=round(max(held) / known, 4) if known else 0.0,
        unseen=round(unseen_weight / whole, 4),
        unknown=tuple(t.word for t in unseen if rare_in_english(t.word)),
        terms=len(terms),
        chunks=total,
    )


def _paraphrase(term: Term) -> bool:
    """An everyday English word no readable chunk holds ("protect" where the documents say
    "never exhausts"), or a slip of one ("chnage"): the question's wording, not a topic the
    documents lack."""
    return term.df == 0 and (everyday(term.word.lower()) or misspelt_everyday(term.word.lower()))


def everyday(word: str) -> bool:
    return zipf_frequency(word) >= settings.RELEVANCE_EVERYDAY_ZIPF


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@lru_cache(maxsize=4096)
def misspelt_everyday(word: str) -> bool:
    """One edit away from an everyday English word (Norvig's candidates: deletes, swaps,
    replacements, inserts), for words long enough that this is rarely a name."""
    if len(word) < MIN_FUZZY_LENGTH or not word.isalpha():
        return False
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    candidates = {a + b[1:] for a, b in splits if b}
    candidates |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    candidates |= {a + c + b[1:] for a, b in splits if b for c in _LETTERS}
    candidates |= {a + c + b for a, b in splits for c in _LETTERS}
    candidates.discard(word)
    return any(everyday(candidate) for candidate in candidates)


MIN_FUZZY_LENGTH = 5  # shorter words are too often one edit from another word ("saml", "same")


def recover_unseen(terms: list[Term], hits: list[Hit]) -> list[Term]:
    """Terms no chunk's full-text index holds, found in the retrieved passages all the same: as
    a word inside a token the parser keeps whole (``healthz`` in ``/healthz``; not ``gzip`` in
    ``GzipFile``), as another form of a word they hold, or one
    typing slip away from one of their words ("chnage", "circut"). Such a term counts as a rare
    word those passages hold."""
    texts = [hit.text.lower() for hit in hits]
    words = {word for text in texts for word in _WORDS.findall(text)}
    recovered = []
    for term in terms:
        if term.df:
            recovered.append(term)
            continue
        word = term.word.lower()
        variants = {word}
        if len(word) >= MIN_FUZZY_LENGTH:
            variants |= {w for w in words if one_edit_apart(word, w)}
            # "chunker" where the passages say "chunk": the same word with another ending
            variants |= {word[:-cut] for cut in (1, 2, 3) if len(word) - cut >= MIN_FUZZY_LENGTH} & words
        found = re.compile("|".join(rf"(?<![a-z]){re.escape(v)}(?![a-z])" for v in sorted(variants)))
        holding = frozenset(hit.chunk_id for hit, text in zip(hits, texts) if found.search(text))
        recovered.append(Term(term.stem, term.word, 1, holding) if holding else term)
    return recovered


def one_edit_apart(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one letter inserted, deleted, replaced, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    if len(a) < len(b):
        return a[start:] == b[start + 1 :]
    swapped = start + 1 < len(a) and a[start] == b[start + 1] and a[start + 1] == b[start]
    return a[start + 1 :] == b[start + 1 :] or (swapped and a[start + 2 :] == b[start + 2 :])


def query_terms(user, query: str, hit_ids: list[int], collections: Sequence[int] | None) -> tuple[list[Term], int]:
    """The query's terms with their document frequencies, and the number of readable chunks."""
    params = {
        "user": user.pk,
        "collections": collection_ids(collections),
        "words": question_words(query),
        "ignored": CONTRACTIONS,
        "cap": DF_CAP,
        "hits": hit_ids,
    }
    with connection.cursor() as cursor:
        cursor.execute(TERMS, params)
        rows = cursor.fetchall()
    # Numbers are no topic (a version, a year, a tag): they neither make a passage relevant nor
    # a question unanswerable.
    terms = [Term(stem, word, df, frozenset(hits)) for stem, word, df, hits, _ in rows if not _has_digit(stem)]
    return terms, (rows[0][4] if rows else 0)


def _has_digit(text: str) -> bool:
    return any(ch.isdigit() for ch in text)


def question_words(query: str) -> list[str]:
    """The query's words; a dotted name counts as its parts (``re.fullmatch``: ``re``, ``fullmatch``),
    as documents rarely spell it whole (pydoc documents ``fullmatch`` under the heading ``re``)."""
    return _WORDS.findall(_DOTTED.sub(" ", capped_query(query)))


def stem(word: str) -> str:
    """A crude English stem, enough to match "pools" with "pool" and "limits" with "limited" (the
    extractive answer and the grounding check compare words with it; Postgres stems for search)."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def rare_in_english(word: str) -> bool:
    """A word that is not everyday English (Zipf frequency below RELEVANCE_RARE_WORD_ZIPF): a name
    of a product, module or place."""
    return zipf_frequency(word.lower()) < settings.RELEVANCE_RARE_WORD_ZIPF


_frequencies_lock = threading.Lock()


@lru_cache(maxsize=65536)
def zipf_frequency(word: str) -> float:
    return _lookup()(word, "en")


@lru_cache(maxsize=1)
def _lookup():
    """wordfreq's lookup, its English list loaded once (~1 s of CPU): under a lock, as a burst of
    first questions on a fresh server would otherwise load it on every database thread at once."""
    with _frequencies_lock:
        from wordfreq import zipf_frequency as lookup

        lookup("the", "en")
        return lookup


def warm_up() -> None:
    """Start loading the embedding engine and the word frequencies (~1 s, ~45 MB) in the
    background, so a fresh server's first question waits for neither; returns at once."""
    embedding.warm_up()
    if _lookup.cache_info().currsize == 0:
        threading.Thread(target=_lookup, name="wordfreq-load", daemon=True).start()
