"""The product's server (manage.py serve: uvicorn) as deployed: a connection storm where every
client is accepted and gets its own answer with the DB pool holding, and two server processes (each
with its worker processes) sharing breakers, rate limits and per-user answer limits through Redis."""

import asyncio
import json
import urllib.request
import uuid

import pytest
import websockets
from channels.db import database_sync_to_async
from django.db import connection

from tests.conftest import LiveServer, session_cookie

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
STORM = 200
POOL_MAX = 10


async def ask_once(server: LiveServer, cookie: str, question: str) -> dict:
    """Connect and ask at once (no waiting for the others); the ``finish`` frame, the ``error``
    that refused the question, or what failed."""
    url = server.url.replace("http", "ws") + "/ws/chat/"
    headers = {"Cookie": cookie, "Origin": server.url}
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=60) as ws:
            frame = {"type": "ask", "conversation_id": None, "client_id": str(uuid.uuid4()), "text": question}
            await ws.send(json.dumps(frame))
            async with asyncio.timeout(180):
                while True:
                    reply = json.loads(await ws.recv())
                    if reply["type"] == "finish" or (reply["type"] == "error" and "answer_id" not in reply):
                        return reply  # the answer's end, or the question refused
    except Exception as exc:  # refused, reset, handshake or answer timeout: what the user would see
        return {"type": "failed", "error": f"{type(exc).__name__}: {exc}"}


def answers_counted(server: LiveServer) -> int:
    """``docchat_answers_total`` over every status, as /metrics reports it (loopback may scrape)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return int(sum(float(line.split()[-1]) for line in lines if line.startswith("docchat_answers_total{")))


def server_connections(name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name])
        return cursor.fetchone()[0]


async def test_it_accepts_200_clients_connecting_and_asking_at_the_same_moment(people, fake_groq):
    fake_groq.configure(tokens=10, delay=0.01)
    name = "docchat-storm"
    server = await asyncio.to_thread(
        LiveServer(
            fake_groq,
            DB_APPLICATION_NAME=name,
            DB_POOL_MAX=POOL_MAX,
            MAX_GENERATIONS_PER_USER=STORM,
            WS_MAX_SOCKETS_PER_USER=STORM,
        ).start
    )
    cookie = (await database_sync_to_async(session_cookie)(people["alice"])).decode()
    peak = 0
    storming = True

    async def watch_pool() -> None:
        nonlocal peak
        while storming:
            peak = max(peak, await database_sync_to_async(server_connections)(name))
            await asyncio.sleep(0.05)  # sampling pg_stat_activity while the storm runs

    watcher = asyncio.create_task(watch_pool())
    try:
        questions = [f"Where do zebras migrate? storm {i}" for i in range(STORM)]
        finishes = await asyncio.gather(*(ask_once(server, cookie, q) for q in questions))
    finally:
        storming = False
        await watcher
        await asyncio.to_thread(server.stop)

    failed = [f for f in finishes if f["type"] != "finish" or f["status"] != "complete"]
    assert not failed, f"{len(failed)} of {STORM} failed, e.g. {failed[:3]}"
    for question, finish in zip(questions, finishes):
        assert f"«{question}»" in finish["text"]  # its own answer (the fake LLM echoes the question)
    assert 0 < peak <= POOL_MAX


async def test_two_server_processes_share_breakers_rate_limits_and_answer_limits(people, fake_groq, redis_server):
    shared = {
        "REDIS_URL": redis_server["url"],
        "RATE_LIMIT_PER_MINUTE": 4,
        "MAX_GENERATIONS_PER_USER": 2,
        "BREAKER_LLM_MIN_CALLS": 2,
        # The 7 answers before the failures count as successes in the shared window: 2 failures
        # more are 2 of 9 calls, which open it at 20 % (and 1 of 8 does not).
        "BREAKER_LLM_FAILURE_RATE": 0.2,
        "BREAKER_LLM_TTL": 600,
        "WEB_CONCURRENCY": 2,
    }
    a, b = await asyncio.gather(*(asyncio.to_thread(LiveServer(fake_groq, **shared).start) for _ in range(2)))
    alice, bob, charlie = [
        (await database_sync_to_async(session_cookie)(people[name])).decode() for name in ("alice", "bob", "charlie")
    ]
    try:
        # bob's 4 questions a minute count on both: the fifth is refused wherever it arrives.
        for server in (a, b, a, b):
            assert (await ask_once(server, bob, "When is the pelican launch?"))["type"] == "finish"
        refused = await ask_once(b, bob, "When is the pelican launch?")
        assert refused["type"] == "error" and refused["code"] == "rate_limited"

        # charlie's 2 answers in progress on A leave no room for a third on B.
        slow = "[[fake tokens=200 delay=0.05]] How often is the coffee machine cleaned?"
        long_answers = [asyncio.create_task(ask_once(a, charlie, slow)) for _ in range(2)]
        await asyncio.sleep(3)  # both are streaming by now (10 s each)
        third = await ask_once(b, charlie, "How often is the coffee machine cleaned?")
        assert third["type"] == "error" and third["code"] == "too_many_generations"
        assert all(f["status"] == "complete" for f in await asyncio.gather(*long_answers))
        assert (await ask_once(b, charlie, "How often is the coffee machine cleaned?"))["status"] == "complete"

        # Last, as it degrades every answer after it: the LLM breaker opened by failures through A
        # is open in B, which degrades at once without calling the LLM.
        for _ in range(2):
            assert (await ask_once(a, alice, "[[fake mode=error]] Where do zebras migrate?"))["status"] == "degraded"
        calls = fake_groq.fake.stats.requests
        answer = await ask_once(b, alice, "Where do zebras migrate?")
        assert answer["status"] == "degraded" and answer["error_code"] == "llm_circuit_open"
        assert fake_groq.fake.stats.requests == calls

        # Each server runs 2 worker processes: whichever answers /metrics reports the 6 answers A
        # served, from both its workers (Prometheus multiprocess mode).
        scrapes = await asyncio.gather(*(asyncio.to_thread(answers_counted, a) for _ in range(6)))
        assert scrapes == [6] * 6
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
