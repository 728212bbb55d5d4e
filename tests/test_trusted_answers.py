"""Answers a person can trust: the offline extractive answer, the gate that refuses only what the
documents do not cover, follow-ups, and the grounding check on every generated answer."""

from __future__ import annotations

import json
import re

import pytest
from django.conf import settings

from chat import llm
from chat.extractive import split_prose, units_of
from chat.grounding import check_answer, claims_in, nothing_supported
from chat.prompting import FALLBACK_PREFIX, NOT_FOUND_ANSWER, UNSURE_PREFIX
from chat.rendering import render_answer
from documents.relevance import one_edit_apart
from monitoring import metrics

pytestmark = pytest.mark.django_db(transaction=True)
README_QUESTION = "How does DocChat protect the database pool?"


@pytest.fixture
def offline():
    """No model configured: the embedded default, the extractive answer."""
    offered = settings.LLM_PROVIDERS
    settings.LLM_PROVIDER, settings.LLM_PROVIDERS = "extractive", ["extractive", "local"]
    llm.forget_providers()
    yield
    settings.LLM_PROVIDERS = offered
    llm.forget_providers()


# --- offline, extractive ----------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_it_answers_the_readmes_example_offline_with_cited_sentences(handbook, offline, chat_client):
    async with chat_client(handbook) as client:
        finish, frames = await client.answer(README_QUESTION)
    assert finish["status"] == "complete" and finish["provider"] == "extractive", finish
    text = finish["text"]
    assert NOT_FOUND_ANSWER not in text and UNSURE_PREFIX not in text
    assert "CONN_MAX_AGE = 0" in text or "connection is held" in text, text
    assert re.search(r"\[\d\]", text) and finish["sources"]
    assert finish["support"]["unsupported"] == 0 and finish["support"]["supported"] > 0
    # verbatim: every sentence of the answer is a sentence of a cited passage
    for sentence in finish["support"]["sentences"]:
        cited = [finish["sources"][n - 1] for n in sentence["sources"]]
        assert cited, sentence


@pytest.mark.asyncio
async def test_it_resolves_follow_ups_against_the_conversation(handbook, offline, chat_client):
    async with chat_client(handbook) as client:
        first, _ = await client.answer("how long does the secret key have to be?")
        assert "50" in first["text"], first["text"]
        conversation_id = await _conversation_of(client, first)
        for follow_up in ("how do I generate one?", "tell me more"):
            finish, _ = await client.answer(follow_up, conversation_id=conversation_id)
            assert finish["status"] == "complete", finish
            assert NOT_FOUND_ANSWER not in finish["text"], (follow_up, finish["text"])
            assert finish["text"] != first["text"]


async def _conversation_of(client, finish) -> int:
    from channels.db import database_sync_to_async

    from chat.models import Message

    return await database_sync_to_async(lambda: Message.objects.get(pk=finish["answer_id"]).conversation_id)()


@pytest.mark.asyncio
async def test_it_still_refuses_what_the_documents_never_mention(handbook, offline, chat_client):
    async with chat_client(handbook) as client:
        for question in ("Can users log in with Okta single sign-on?", "Who won the 2018 FIFA World Cup?"):
            finish, _ = await client.answer(question)
            assert finish["text"] == NOT_FOUND_ANSWER and finish["sources"] == [], (question, finish["text"])


@pytest.mark.asyncio
async def test_a_loose_match_is_quoted_and_said_to_be_unsure(handbook, offline, chat_client):
    async with chat_client(handbook) as client:
        finish, _ = await client.answer(
            "could a stranger lock me out by typing wrong passwords from their own machine?"
        )
    assert finish["text"].startswith(UNSURE_PREFIX), finish["text"]
    assert finish["sources"] and finish["support"]["unsupported"] == 0


def test_a_passage_is_cut_into_sentences_items_and_code():
    text = (
        "# Heading\n\nThe pool waits 10 s, e.g. under load. Then it fails.\n\nSettings:\n"
        "- `DB_POOL_MAX`: the most connections\n- `DB_POOL_MIN`: kept open\n\n```\nmake run\n```"
    )
    units = units_of(text, 1)
    assert [u.kind for u in units] == ["sentence", "sentence", "sentence", "item", "item", "code"]
    assert units[0].text == "The pool waits 10 s, e.g. under load."
    assert split_prose("Version 3.5 is out. It works.") == ["Version 3.5 is out.", "It works."]


# --- the grounding check ----------------------------------------------------------------------------
ZEBRA_TRUTH = "Zebras migrate across the Serengeti every year following the rains [1]."
ZEBRA_LIES = [
    "The great migration covers about 950 kilometres [1].",  # a number: the passage says 800
    "Set `ZEBRA_SPEED_LIMIT` to slow them down [1].",  # a code-like name
    "See https://zebras.example.org/guide for the route [1].",  # a link
    "It was first mapped by Charles Darwin [1].",  # a named entity
    'The rangers call it "the long walk home" [1].',  # a quoted phrase
]


@pytest.mark.asyncio
async def test_every_injected_lie_is_flagged_and_shown(people, chat_client, fake_groq):
    fake_groq.configure(text=" ".join([ZEBRA_TRUTH, *ZEBRA_LIES]))
    flagged_before = metrics.grounding_summary()["unsupported_sentences"]
    async with chat_client(people["alice"]) as client:
        finish, _ = await client.answer("Where do zebras migrate?")
    support = finish["support"]
    by_text = {s["text"]: s for s in support["sentences"]}
    assert by_text[ZEBRA_TRUTH]["status"] == "supported"
    for lie, claim in zip(
        ZEBRA_LIES,
        ["950", "ZEBRA_SPEED_LIMIT", "https://zebras.example.org/guide", "Charles Darwin", "the long walk home"],
    ):
        assert by_text[lie]["status"] == "unsupported" and claim in by_text[lie]["missing"], by_text[lie]
    assert support["unsupported"] == len(ZEBRA_LIES) and not support.get("fallback")
    assert finish["html"].count('class="unsupported"') == len(ZEBRA_LIES)
    assert 'href="https://zebras.example.org' not in finish["html"]  # a link found in no source is no link
    assert metrics.grounding_summary()["unsupported_sentences"] - flagged_before == len(ZEBRA_LIES)


@pytest.mark.asyncio
async def test_an_answer_with_nothing_supported_falls_back_to_quotes(people, chat_client, fake_groq, tmp_path):
    lie = "The great migration covers about 950 kilometres [1]."
    fake_groq.configure(text=lie)
    async with chat_client(people["alice"]) as client:
        finish, _ = await client.answer("How far do zebras migrate?")
    assert finish["text"].startswith(FALLBACK_PREFIX) and "800 kilometres" in finish["text"], finish["text"]
    assert finish["support"]["fallback"] == lie and finish["support"]["unsupported"] == 0
    assert finish["status"] == "complete"


@pytest.mark.asyncio
async def test_the_conversation_api_carries_the_support(people, chat_client, fake_groq, client):
    fake_groq.configure(text=" ".join([ZEBRA_TRUTH, ZEBRA_LIES[0]]))
    async with chat_client(people["alice"]) as chat:
        finish, _ = await chat.answer("Where do zebras migrate?")
        conversation_id = await _conversation_of(chat, finish)
    from channels.db import database_sync_to_async

    def read_conversation() -> dict:
        client.force_login(people["alice"])
        return client.get(f"/api/conversations/{conversation_id}/").json()

    messages = (await database_sync_to_async(read_conversation)())["messages"]
    answer = [m for m in messages if m["role"] == "assistant"][0]
    assert answer["support"] == finish["support"] and answer["support"]["unsupported"] == 1


# True statements in other words than the passage's, with its numbers and names: none may be flagged.
PASSAGE = (
    "`DB_POOL_TIMEOUT` (default `10.0` seconds, minimum 0.1): how long a request waits for a free pooled "
    "connection before failing. DocChat uses psycopg 3's connection pool with `CONN_MAX_AGE = 0`. The "
    "embedded PostgreSQL 18 server ships pgvector 0.8. See https://github.com/pgvector/pgvector for the "
    'extension. Rate limits use the "moving window" strategy of the limits package, 30 questions per minute.'
)
TRUE_PARAPHRASES = [
    "A request gives up after waiting 10 seconds for a pooled connection [1].",
    "The wait is set with DB_POOL_TIMEOUT and cannot go below 0.1 [1].",
    "Nothing else keeps connections open, since CONN_MAX_AGE is 0 [1].",
    "The database bundled with DocChat is PostgreSQL 18 with pgvector 0.8 [1].",
    "The extension lives at https://github.com/pgvector/pgvector [1].",
    'Questions are limited with a "moving window": 30 a minute [1].',
    "Pooling is done by psycopg 3 [1].",
    "It is the `DB_POOL_TIMEOUT` setting [1].",
    "In short, the pool waits a while and then fails [1].",
    "DocChat answers from your documents [1].",
]
FALSE_STATEMENTS = [
    "A request gives up after 45 seconds of waiting [1].",  # (a number the passage has elsewhere, 30, would pass: the check finds facts, not their meaning)
    "Set DB_POOL_WAIT to change it [1].",
    "The bundled server is PostgreSQL 16 [1].",
    "The extension lives at https://pgvector.example.com [1].",
    "Pooling is done by SQLAlchemy [1].",
    'Limits use the "fixed window" strategy [1].',
]


def test_no_true_sentence_is_flagged_and_every_false_one_is():
    truth = check_answer(" ".join(TRUE_PARAPHRASES), {1: PASSAGE}, "How does the pool wait?")
    assert [s["missing"] for s in truth["sentences"] if s["status"] == "unsupported"] == []
    lies = check_answer(" ".join(FALSE_STATEMENTS), {1: PASSAGE}, "How does the pool wait?")
    assert [s["status"] for s in lies["sentences"]] == ["unsupported"] * len(FALSE_STATEMENTS), lies
    assert nothing_supported(lies) and not nothing_supported(truth)


def test_the_check_on_the_labelled_set_flags_few_truths_and_most_lies():
    """eval/grounding.jsonl: 65 faithful answers in other words than their passage, 36 that change
    one number, name, entity, link or quote. Measured: 0 of 65 flagged, 33 of 36 lies flagged (the
    3 missed: a lowercase hyphenated model name, a name the passage has in another role, and a
    product name that is an everyday word; bench/RESULTS.md, "Issue 22")."""
    rows = [json.loads(line) for line in (settings.BASE_DIR / "eval" / "grounding.jsonl").read_text().splitlines()]
    flagged = {
        row["answer"]: check_answer(row["answer"], {1: row["passage"]}, row["question"])["unsupported"] > 0
        for row in rows
    }
    truths = [row for row in rows if row["true"]]
    lies = [row for row in rows if not row["true"]]
    false_flags = [row["answer"] for row in truths if flagged[row["answer"]]]
    assert len(truths) >= 60 and len(false_flags) / len(truths) <= 0.05, false_flags
    assert sum(flagged[row["answer"]] for row in lies) >= 33, [r["answer"] for r in lies if not flagged[r["answer"]]]
    assert all(flagged[row["answer"]] for row in lies if row["kind"] in ("number", "link", "quote"))


def test_a_sentence_is_checked_against_the_passages_it_cites():
    passages = {1: "The pool holds 10 connections.", 2: "The queue holds 256 answers."}
    support = check_answer("The pool holds 256 connections [1]. The queue holds 256 answers [2].", passages, "?")
    assert [s["status"] for s in support["sentences"]] == ["unsupported", "supported"]
    # no brackets of its own: the next cited sentence of its paragraph gives its sources
    support = check_answer("The queue holds 256 answers. That is the limit [2].", passages, "?")
    assert support["sentences"][0]["sources"] == [2] and support["unsupported"] == 0
    # a citation of a source that does not exist supports nothing
    assert check_answer("The pool holds 10 connections [7].", passages, "?")["unsupported"] == 1


def test_claims_are_numbers_names_quotes_entities_and_links():
    claims = {
        (c.kind, c.text)
        for c in claims_in('Call `task_done()` on chat/janitor.py after 15 s, as "Kafka" at http://x.io says.')
    }
    assert {("name", "task_done()"), ("name", "chat/janitor.py"), ("number", "15"), ("quote", "Kafka"),
            ("link", "http://x.io")} <= claims  # fmt: skip
    assert ("entity", "Mount Everest") in {(c.kind, c.text) for c in claims_in("Water boils lower on Mount Everest.")}
    assert claims_in("The answer is short and plain.") == []  # nothing to check: not flagged either


def test_only_links_found_in_the_sources_render_as_links():
    support = check_answer("Read [the guide](https://real.example/guide) [1] or [this](https://fake.example) [1].",
                           {1: "The guide is at https://real.example/guide."}, "?")  # fmt: skip
    html = render_answer(
        "Read [the guide](https://real.example/guide) [1] or [this](https://fake.example) [1].", 1, support
    )
    assert 'href="https://real.example/guide"' in html and 'href="https://fake.example"' not in html


def test_an_answer_cannot_forge_the_marks_of_unsupported_sentences():
    """The renderer marks flagged sentences with a private-use character; one in the model's text
    (here pretending to be mark 5 of 1) is dropped, not taken for a mark."""
    text = "The pool holds 256 connections [1]. \ue0005\ue000 Fine."
    support = check_answer(text, {1: "The pool holds 10 connections."}, "?")
    html = render_answer(text, 1, support)
    assert html.count('class="unsupported"') == 1 and "\ue000" not in html


def test_a_typing_slip_is_one_edit_away():
    assert (
        one_edit_apart("chnage", "change") and one_edit_apart("circut", "circuit") and one_edit_apart("secnd", "second")
    )
    assert not one_edit_apart("okta", "ok") and not one_edit_apart("pelican", "pelicans-x")


# --- over-long questions ----------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_an_over_long_question_is_refused_with_its_length_not_cut(people, chat_client):
    async with chat_client(people["alice"]) as client:
        client_id = await client.ask("x" * (settings.MAX_QUESTION_CHARS + 5))
        error = await client.receive()
    assert error["type"] == "error" and error["code"] == "question_too_long" and error["client_id"] == client_id
    assert str(settings.MAX_QUESTION_CHARS + 5) in error["message"]
