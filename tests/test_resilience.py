"""Faults injected for real: a failing LLM opens its breaker, answers degrade to passages, slow
retrieval times out, and nothing is lost."""

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from chat.breakers import breakers
from chat.models import Message

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_it_opens_the_llm_breaker_after_repeated_failures_and_degrades(people, chat_client, fake_groq, settings):
    settings.BREAKER_LLM_THRESHOLD = 5
    settings.BREAKER_LLM_TTL = 1.0
    fake_groq.configure(mode="error", status=500)
    async with chat_client(people["alice"]) as client:
        for _ in range(5):
            finish, _ = await client.answer("Where do zebras migrate?")
            assert finish["status"] == "degraded" and finish["error_code"] == "llm_unavailable"
        assert fake_groq.fake.stats.requests == 5

        state = {b["name"]: b for b in await breakers().describe()}["llm"]
        assert state["state"] == "opened" and "LLMUnavailable" in state["last_error"]

        started = time.monotonic()
        finish, frames = await client.answer("Where do zebras migrate?")
        assert finish["status"] == "degraded" and finish["error_code"] == "llm_circuit_open"
        assert fake_groq.fake.stats.requests == 5  # the open breaker spared the dead LLM
        assert time.monotonic() - started < 2
        assert "language model is unavailable" in finish["text"] and "Serengeti" in finish["text"]
        assert finish["sources"] and "[1]" in finish["text"]

        # after the recovery time one trial call goes through; success closes the breaker
        fake_groq.configure(mode="ok")
        await asyncio.sleep(1.1)  # the breaker's recovery time (ttl), set to 1 s above
        finish, _ = await client.answer("Where do zebras migrate?")
        assert finish["status"] == "complete"
        state = {b["name"]: b for b in await breakers().describe()}["llm"]
        assert state["state"] == "closed"


async def test_it_resets_an_open_breaker_by_hand(people, chat_client, fake_groq, settings):
    settings.BREAKER_LLM_THRESHOLD = 2
    settings.BREAKER_LLM_TTL = 600
    fake_groq.configure(mode="error")
    async with chat_client(people["alice"]) as client:
        for _ in range(2):
            await client.answer("Where do zebras migrate?")
        await breakers().reset("llm")
        fake_groq.configure(mode="ok")
        finish, _ = await client.answer("Where do zebras migrate?")
    assert finish["status"] == "complete"


async def test_it_does_not_count_a_stopped_answer_as_an_llm_failure(people, chat_client, settings):
    settings.BREAKER_LLM_THRESHOLD = 1
    async with chat_client(people["alice"]) as client:
        await client.ask("[[fake tokens=300 delay=0.02]] Where do zebras migrate?")
        ack = await client.receive()
        await client.until("delta")
        await client.send({"type": "stop", "answer_id": ack["answer_id"]})
        await client.until("finish")
        finish, _ = await client.answer("Where do zebras migrate?")
    assert finish["status"] == "complete"


async def test_it_times_out_a_slow_retrieval_and_keeps_the_loop_responsive(people, chat_client, settings):
    settings.RETRIEVAL_TIMEOUT_MS = 300
    lock_ready, release = asyncio.Event(), asyncio.Event()

    def hold_lock():
        # A real lock on the documents table makes the search wait on Postgres until it times out.
        from django.db import transaction

        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("LOCK TABLE documents_collection IN ACCESS EXCLUSIVE MODE")
            loop.call_soon_threadsafe(lock_ready.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(30)
        connection.close()

    loop = asyncio.get_running_loop()
    holder = loop.run_in_executor(None, hold_lock)
    await lock_ready.wait()
    lags = []

    async def measure_lag():
        while not release.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)  # a probe: how late does the loop wake us?
            lags.append(time.monotonic() - before - 0.01)

    probe = asyncio.create_task(measure_lag())
    async with chat_client(people["alice"]) as client:
        finish, frames = await client.answer("Where do zebras migrate?")
    release.set()
    await holder
    await probe
    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "retrieval_unavailable" and "timed out" in error["message"]
    assert finish["status"] == "failed"
    assert max(lags) < 0.05
    question = await database_sync_to_async(Message.objects.get)(role="user")
    assert question.text == "Where do zebras migrate?"  # the question was kept


async def test_it_persists_every_question_with_a_final_status_under_load_and_failures(
    people, chat_client, fake_groq, settings
):
    settings.MAX_GENERATIONS_PER_USER = 100  # one user, 50 tabs

    async def chat(i):
        async with chat_client(people["alice"]) as client:
            mode = "mode=error" if i % 5 == 0 else "mode=ok"  # 20 % of requests fail
            finish, _ = await client.answer(f"[[fake {mode} tokens=20 delay=0.01]] Where do zebras migrate? {i}")
            return finish

    finishes = await asyncio.gather(*(chat(i) for i in range(50)))
    statuses = await database_sync_to_async(
        lambda: list(Message.objects.filter(role="assistant").values_list("status", flat=True))
    )()
    assert len(statuses) == 50 == await database_sync_to_async(Message.objects.filter(role="user").count)()
    assert set(statuses) <= {"complete", "degraded"}
    assert statuses.count("degraded") >= 10 - 1  # the failing 20 %, whatever the breaker did
    assert sorted(f["status"] for f in finishes) == sorted(statuses)
