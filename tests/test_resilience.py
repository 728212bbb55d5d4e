"""Faults injected for real: a failing LLM opens its breaker, answers degrade to passages, slow
retrieval times out, and nothing is lost."""

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from chat.breakers import CircuitOpen, breakers
from chat.models import Message

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_it_opens_the_llm_breaker_after_repeated_failures_and_degrades(people, chat_client, fake_groq, settings):
    settings.BREAKER_LLM_MIN_CALLS = 5
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
    settings.BREAKER_LLM_MIN_CALLS = 2
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
    settings.BREAKER_LLM_MIN_CALLS = 1
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
    settings.WS_MAX_SOCKETS_PER_USER = 100

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


async def test_it_does_not_open_the_llm_breaker_for_questions_the_model_rejects(people, chat_client, settings):
    # A Groq HTTP 400 (e.g. one user's question too long for the model) is that request's error.
    settings.BREAKER_LLM_MIN_CALLS = 2
    async with chat_client(people["alice"]) as client:
        for _ in range(5):
            finish, frames = await client.answer("[[fake mode=error status=400]] Where do zebras migrate?")
            assert finish["status"] == "degraded" and finish["error_code"] == "llm_request_rejected"
            error = next(f for f in frames if f["type"] == "error")
            assert "shorter or simpler" in error["message"]
        state = {b["name"]: b for b in await breakers().describe()}["llm"]
        assert state["state"] == "closed" and state["failures"] == 0

        finish, _ = await client.answer("Where do zebras migrate?")  # bob, charlie, everyone: unaffected
    assert finish["status"] == "complete"


@pytest.mark.parametrize("status", [429, 503])
async def test_it_counts_rate_limits_and_server_errors_against_the_breaker(people, chat_client, settings, status):
    settings.BREAKER_LLM_MIN_CALLS = 2
    async with chat_client(people["alice"]) as client:
        for _ in range(2):
            finish, _ = await client.answer(f"[[fake mode=error status={status}]] Where do zebras migrate?")
            assert finish["error_code"] == "llm_unavailable"
        finish, _ = await client.answer("Where do zebras migrate?")
    assert finish["error_code"] == "llm_circuit_open"


async def test_it_keeps_the_llm_breaker_closed_when_one_call_in_five_fails(people, chat_client, fake_groq, settings):
    settings.BREAKER_LLM_MIN_CALLS = 5
    settings.BREAKER_LLM_FAILURE_RATE = 0.5
    async with chat_client(people["alice"]) as client:
        statuses = []
        for i in range(20):
            mode = "error" if i % 5 == 4 else "ok"  # four failures in a row of five would have opened it
            finish, _ = await client.answer(f"[[fake mode={mode}]] Where do zebras migrate? {i}")
            statuses.append(finish["status"])
    assert statuses.count("degraded") == 4 and statuses.count("complete") == 16
    assert fake_groq.fake.stats.requests == 20  # every healthy question reached the LLM
    state = {b["name"]: b for b in await breakers().describe()}["llm"]
    assert state["state"] == "closed" and (state["calls"], state["failures"]) == (20, 4)


async def test_it_counts_a_streaming_answer_as_a_success_at_its_first_token(people, chat_client, settings):
    # Three slow, healthy answers are streaming when three fast failures arrive: 3 of 6 calls failed
    # (50 %, under the 60 % that opens it). Counted only when the slow ones end, the failures would
    # have been 3 of 3 and opened the breaker for everyone.
    settings.BREAKER_LLM_MIN_CALLS = 3
    settings.BREAKER_LLM_FAILURE_RATE = 0.6
    settings.MAX_GENERATIONS_PER_USER = 10
    slow = [chat_client(people["alice"]) for _ in range(3)]
    for client in slow:
        await client.__aenter__()
    try:
        for client in slow:
            await client.ask("[[fake tokens=60 delay=0.05]] Where do zebras migrate?")
        for client in slow:
            await client.until("delta")
        async with chat_client(people["alice"]) as failing:
            for _ in range(3):
                finish, _ = await failing.answer("[[fake mode=error]] Where do zebras migrate?")
                assert finish["error_code"] == "llm_unavailable"
            state = {b["name"]: b for b in await breakers().describe()}["llm"]
            assert state["state"] == "closed" and (state["calls"], state["failures"]) == (6, 3)
            finish, _ = await failing.answer("Where do zebras migrate?")
            assert finish["status"] == "complete"
        for client in slow:
            finish, _ = await client.until("finish")
            assert finish["status"] == "complete"
    finally:
        for client in slow:
            await client.__aexit__(None, None, None)


async def test_it_forgets_failures_older_than_its_window_and_opens_on_recent_ones(db, settings):
    settings.BREAKER_RETRIEVAL_MIN_CALLS = 2
    settings.BREAKER_RETRIEVAL_WINDOW = 1.0

    async def failing_search() -> None:
        with pytest.raises(TimeoutError):
            async with breakers().guard("retrieval"):
                raise TimeoutError("the search timed out")

    await failing_search()
    await asyncio.sleep(1.1)  # let the first failure age out of the 1 s window
    await failing_search()
    state = {b["name"]: b for b in await breakers().describe()}["retrieval"]
    assert state["state"] == "closed" and (state["calls"], state["failures"]) == (1, 1)

    await failing_search()  # 2 of 2 recent calls failed
    with pytest.raises(CircuitOpen):
        async with breakers().guard("retrieval"):
            pass


async def test_it_counts_the_failures_of_every_server_process_together_through_redis(db, settings, redis_server):
    # Two processes' breakers (each process has its own Breakers), one LLM failure each: with the
    # window in Redis, 2 of 2 calls failed and the breaker opens for both.
    from chat.breakers import Breakers

    settings.REDIS_URL = redis_server["url"]
    settings.BREAKER_LLM_MIN_CALLS = 2
    first, second = Breakers(), Breakers()

    async def failing_call(process: Breakers) -> None:
        with pytest.raises(ConnectionError):
            async with process.guard("llm"):
                raise ConnectionError("the LLM is down")

    await failing_call(first)
    state = {b["name"]: b for b in await second.describe()}["llm"]
    assert state["state"] == "closed" and (state["calls"], state["failures"]) == (1, 1) and state["shared"]
    await failing_call(second)
    for process in (first, second):
        with pytest.raises(CircuitOpen):
            async with process.guard("llm"):
                pass
