"""Answer quality: `manage.py eval` on the labelled set over docs/, the calibrated "not found" gate,
and the prompt a small local model gets."""

import asyncio
import json
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from chat.evaluation import EvalSetError, declines, load_cases
from chat.llm.local import LocalProvider, LoopDetector
from chat.prompting import cited_numbers, focus, prompt_for
from documents.embedding import encode
from documents.relevance import retrieve

HANDBOOK_SET = settings.BASE_DIR / "eval" / "handbook.jsonl"
USERS_SET = settings.BASE_DIR / "eval" / "handbook_users.jsonl"

pytestmark = pytest.mark.django_db(transaction=True)


def run_eval(*args: str) -> dict:
    from io import StringIO

    out = StringIO()
    call_command("eval", *args, "--json", stdout=out)
    return json.loads(out.getvalue().strip().splitlines()[-1])


def test_it_keeps_the_handbook_sets_figures(handbook):
    """The shipped set over docs/, answered offline (the extractive default), at the levels reached
    when the gate was calibrated again for issue 22 (bench/RESULTS.md, "Issue 22"): a change to
    chunking, retrieval, the gate or the extractive answer that loses quality fails here."""
    figures = run_eval(
        str(HANDBOOK_SET),
        "--user",
        "reader",
        "--collection",
        "DocChat handbook",
        "--answers",
        "--provider",
        "extractive",
    )
    assert figures["questions"] == 54 and figures["unanswerable"] == 14
    # Issue 13 left: hit@5 0.975, MRR 0.829, key recall 0.85, not found 14 of 14, false not found 2 of 40
    # (the README's example among them). Issue 22: false not found 0 of 40, not found 12 of 14 and
    # the other 2 quoted as "not sure" (none answered as known).
    # Issue 22's docs (answer modes, grounding, your own model) add passages that outrank the
    # answering one for 1 question (hit@5 0.975 -> 0.95, key recall 0.85 -> 0.825).
    assert figures["hit@5"] >= 0.95, figures
    assert figures["mrr"] >= 0.81, figures
    assert figures["key_recall"] >= 0.825, figures
    assert figures["false_not_found"] <= 0.02, figures
    assert figures["not_found_accuracy"] >= 0.85, figures
    assert figures["not_answered_as_known"] >= 0.92, figures
    assert figures["answerable_unsure"] <= 0.05, figures
    # The answers themselves: the expected facts in the text, nothing stated that no cited passage says.
    assert figures["answer_key_recall"] >= 0.7, figures
    assert figures["answers_with_unsupported_claims"] == 0, figures


def test_it_keeps_the_user_questions_figures(handbook):
    """Questions as people type them (short, vague, misspelt, paraphrased, follow-ups; eval/README.md)."""
    figures = run_eval(
        str(USERS_SET), "--user", "reader", "--collection", "DocChat handbook", "--answers", "--provider", "extractive"
    )
    assert figures["questions"] == 90 and figures["unanswerable"] == 25
    # Before issue 22: not found 0.84, false not found 0.308 (20 of 65, the README's example among them).
    assert figures["false_not_found"] <= 0.02, figures
    assert figures["not_found_accuracy"] >= 0.75, figures
    assert figures["not_answered_as_known"] >= 0.92, figures
    assert figures["answerable_unsure"] <= 0.18, figures  # quoted under "not sure", not refused
    assert figures["answer_key_recall"] >= 0.62, figures
    assert figures["answers_with_unsupported_claims"] == 0, figures


def test_it_answers_not_found_for_what_the_documents_never_mention(handbook):
    """Near-domain questions: each names something (a product, a protocol) no chunk contains."""
    for question in ("How do I configure Okta single sign-on for DocChat?", "Can DocChat post answers to Mattermost?"):
        retrieval = retrieve(handbook, question, encode([question])[0])
        assert retrieval.hits, "the nearest chunks always exist"
        assert not retrieval.relevant, (question, retrieval.evidence)


def test_it_finds_what_the_documents_say_in_other_words(handbook):
    question = "Why do answers arrive in bursts instead of one frame per token?"  # docs say "coalesce"
    retrieval = retrieve(handbook, question, encode([question])[0])
    assert retrieval.relevant, retrieval.evidence
    assert "coalesc" in " ".join(hit.text for hit in retrieval.hits).lower()


def test_it_counts_words_only_in_documents_the_user_may_read(people):
    """bob's launch code is a word alice's documents never contain: for her it is unknown, and
    neither the answer nor the evidence tells her it exists elsewhere."""
    question = "What is the PELICAN launch code?"
    for user, relevant in ((people["alice"], False), (people["bob"], True)):
        retrieval = retrieve(user, question, encode([question])[0])
        assert retrieval.relevant is relevant, retrieval.evidence
        assert all("PELICAN" not in hit.text for hit in retrieval.hits) or user == people["bob"]


def test_it_takes_hostile_query_text_as_plain_words(people):
    question = "what's \\ 'quoted' && !negated | (paren) <-> zebras:* ' \x7f"
    retrieval = retrieve(people["alice"], question, encode([question])[0])
    assert retrieval.hits and retrieval.evidence.terms > 0


def test_eval_reports_a_bad_question_file_by_line(tmp_path, people):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "fine", "source": null, "keys": []}\n{"q": "", "source": "x.md"}\n')
    with pytest.raises(EvalSetError, match="bad.jsonl:2"):
        load_cases(bad)
    with pytest.raises(CommandError, match="bad.jsonl:2"):
        call_command("eval", str(bad), "--user", "alice")


def test_eval_refuses_a_collection_the_user_may_not_read(people):
    with pytest.raises(CommandError, match="no collection 'bob-secrets' that alice may read"):
        call_command("eval", str(HANDBOOK_SET), "--user", "alice", "--collection", "bob-secrets")


def test_eval_with_answers_checks_the_models_citations(people, tmp_path):
    qa = tmp_path / "zebras.jsonl"
    qa.write_text(
        '{"q": "Where do zebras migrate?", "source": "zebras.md", "keys": ["Serengeti"]}\n'
        '{"q": "How do I configure Kubernetes ingress annotations?", "source": null, "keys": []}\n'
    )
    figures = run_eval(str(qa), "--user", "alice", "--answers")
    assert figures["hit@5"] == 1.0 and figures["not_found_accuracy"] == 1.0
    assert figures["answers_citing_source"] == 1.0  # the fake model cites [1], the zebra passage
    assert figures["invalid_citations"] == 0 and figures["answers_repeating"] == 0
    assert figures["declining"] == 0 and figures["unanswerable_declined"] == "0 of 0"


def test_the_local_model_gets_two_short_passages_and_brief_instructions(people):
    question = "How far do zebras migrate?"
    long_hits = retrieve(people["alice"], question, encode([question])[0]).hits * 3
    provider = LocalProvider()
    messages, given = prompt_for(provider, question, [], long_hits, asyncio.run(provider.prompt_counter()))
    assert len(given) == 2
    assert "[1] or [2]" in messages[-1]["content"]
    assert len(messages[-1]["content"]) < 2 * LocalProvider.passage_chars + 400


def test_focus_keeps_the_sentences_nearest_the_question():
    text = " ".join(f"Filler sentence number {n} about nothing in particular." for n in range(40))
    text += " The lamp flashes white every six seconds. " + text
    kept = focus(text, "How often does the lamp flash?", 200)
    assert "lamp flashes white" in kept and len(kept) <= 200


def test_it_stops_a_generation_that_repeats_itself():
    loop = LoopDetector()
    sentence = "The pool is protected by a limit on the number of connections. "
    said = [loop.add(word + " ") for word in (sentence * 3).split()]
    assert any(said)
    fresh = LoopDetector()
    assert not any(fresh.add(word + " ") for word in (sentence + "Each answer holds one for a moment.").split())


def test_it_recognises_an_answer_that_declines():
    assert declines("That is not in the documents [1].")
    assert declines("The sources do not mention a webhook.")
    assert not declines("Zebras migrate across the Serengeti [1].")


def test_cited_numbers_reads_citations_once_in_order():
    assert cited_numbers("A [2] and B [1][2], not [x] or [123].") == [2, 1]


@pytest.mark.asyncio
async def test_an_answer_that_cites_nothing_shows_its_passages(people, chat_client, fake_groq):
    fake_groq.configure(cite=0)
    async with chat_client(people["alice"]) as client:
        finish, _ = await client.answer("Where do zebras migrate?")
    assert finish["status"] == "complete"
    assert "The model cited no source" in finish["text"]
    assert re.search(r"Serengeti.*\[1\]", finish["text"], re.S)


def test_the_shipped_sets_are_valid():
    for path in (HANDBOOK_SET, USERS_SET, Path(settings.BASE_DIR / "eval" / "pydoc.jsonl")):
        cases = load_cases(path)
        assert sum(not case.answerable for case in cases) >= 8
