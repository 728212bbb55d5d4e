"""The monitoring app tells the truth: pool, breakers, streams, alerts, Prometheus metrics."""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncClient

from chat.breakers import breakers
from monitoring import live, metrics

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def staff(operator):
    return operator


async def staff_client(user, **kwargs) -> AsyncClient:
    client = AsyncClient(**kwargs)
    await client.aforce_login(user)
    return client


async def test_it_reports_the_connections_held_from_the_pool(staff):
    client = await staff_client(staff)
    baseline = (await client.get("/monitoring/api/pool")).json()["pool"]["in_use"]  # also opens the pool
    pool = connections["default"].pool
    held = [await sync_to_async(pool.getconn)() for _ in range(3)]
    try:
        body = (await client.get("/monitoring/api/pool")).json()["pool"]
        assert body["in_use"] == baseline + 3 and body["max"] == pool.max_size
        assert body["postgres_connections"] >= 3
    finally:
        for conn in held:
            pool.putconn(conn)
    assert (await client.get("/monitoring/api/pool")).json()["pool"]["in_use"] == baseline


async def test_it_shows_an_open_breaker_everywhere_and_resets_it(people, staff, chat_client, fake_groq, settings):
    settings.BREAKER_LLM_MIN_CALLS = 2
    settings.BREAKER_LLM_TTL = 600
    fake_groq.configure(mode="error")
    async with chat_client(people["alice"]) as chat:
        for _ in range(2):
            await chat.answer("Where do zebras migrate?")

    client = await staff_client(staff, enforce_csrf_checks=True)
    states = {b["name"]: b["state"] for b in (await client.get("/monitoring/api/breakers")).json()["breakers"]}
    assert states["llm"] == "opened"
    page = (await client.get("/monitoring/")).content.decode()
    assert 'class="state opened"' in page and "circuit breaker &#x27;llm&#x27; is opened" in page
    metrics = (await client.get("/metrics")).content.decode()
    assert 'docchat_circuit_breaker_open{name="llm"} 1.0' in metrics

    refused = await client.post("/monitoring/api/breakers/llm/reset")
    assert refused.status_code == 403  # no CSRF token
    page = (await client.get("/monitoring/")).content.decode()
    token = page.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    reset = await client.post("/monitoring/api/breakers/llm/reset", headers={"X-CSRFToken": token})
    assert reset.status_code == 200
    assert {b["name"]: b["state"] for b in reset.json()["breakers"]}["llm"] == "closed"
    assert (await breakers().describe())[0]["state"] == "closed"


async def test_it_keeps_monitoring_from_non_staff(people):
    client = AsyncClient()
    await client.aforce_login(people["alice"])
    assert (await client.get("/monitoring/api/summary")).status_code == 403
    assert (await client.post("/monitoring/api/breakers/llm/reset")).status_code in (
        403,
        302,
    )
    page = await client.get("/monitoring/")
    assert page.status_code == 302 and "/admin/login/" in page.url
    assert (await client.get("/metrics")).status_code == 200  # the test client comes from loopback


async def test_it_refuses_metrics_to_a_remote_anonymous_scraper(db):
    from django.contrib.auth.models import AnonymousUser
    from django.test import RequestFactory

    from monitoring.views import metrics_view

    request = RequestFactory().get("/metrics", REMOTE_ADDR="203.0.113.9")

    async def anonymous():
        return AnonymousUser()

    request.auser = anonymous
    assert (await metrics_view(request)).status_code == 403


async def test_it_counts_active_streams_during_concurrent_chats(people, staff, chat_client, settings):
    settings.MAX_GENERATIONS_PER_USER = 100  # one user, ten tabs
    settings.WS_MAX_SOCKETS_PER_USER = 100
    client = await staff_client(staff)
    peaks = []

    async def watch(done: asyncio.Event):
        while not done.is_set():
            streams = (await client.get("/monitoring/api/streams")).json()["streams"]
            peaks.append(streams["active_generations"])
            await asyncio.sleep(0.05)  # sampling the API while the chats run

    async def chat(i):
        async with chat_client(people["alice"]) as c:
            return await c.answer(f"[[fake tokens=60 delay=0.02]] Where do zebras migrate? {i}")

    done = asyncio.Event()
    watcher = asyncio.create_task(watch(done))
    await asyncio.gather(*(chat(i) for i in range(10)))
    done.set()
    await watcher
    assert max(peaks) >= 5
    after = (await client.get("/monitoring/api/streams")).json()["streams"]
    assert after["active_generations"] == 0 and after["queued"] == 0 and after["websocket_connections"] == 0


async def test_it_samples_from_the_first_chat_without_anyone_on_the_dashboard(people, chat_client):
    async with chat_client(people["alice"]) as chat:
        await chat.answer("Where do zebras migrate?")
        task = live.sampler().task  # started by the ASGI app's middleware, not by the chat code
        assert task is not None and not task.done()
        assert metrics.websocket_connections() >= 1


async def test_it_reports_the_worst_loop_lag_since_a_given_moment(staff):
    client = await staff_client(staff)
    await client.get("/monitoring/api/summary")  # starts the sampler on this loop
    await asyncio.sleep(0.6)  # let its probe run once unblocked
    blocked_at = time.time()
    time.sleep(0.8)  # a blocking call on the event loop: what the probe exists to catch
    await asyncio.sleep(0.6)  # the probe wakes up late and records it
    lag = (await client.get(f"/monitoring/api/summary?lag_since={blocked_at}")).json()["loop_lag_ms"]
    assert lag["max_since"] >= 250 and lag["last_minute_max"] >= lag["max_since"]
    later = (await client.get(f"/monitoring/api/summary?lag_since={time.time()}")).json()["loop_lag_ms"]
    assert later["max_since"] < 250
    assert (await client.get("/monitoring/api/summary?lag_since=yesterday")).status_code == 400


async def test_it_raises_and_clears_alerts_on_thresholds(staff, settings):
    client = await staff_client(staff)
    baseline = (await client.get("/monitoring/api/pool")).json()["pool"]["in_use"]
    pool = connections["default"].pool
    settings.ALERT_POOL_USE = (baseline + 1.5) / pool.max_size  # crossed only while we hold 3 more
    held = [await sync_to_async(pool.getconn)() for _ in range(3)]
    try:
        alerts = (await client.get("/monitoring/api/alerts")).json()["alerts"]
        assert "pool_near_max" in {a["key"] for a in alerts}
        assert all(a["since"] > 0 for a in alerts)
    finally:
        for conn in held:
            pool.putconn(conn)
    alerts = (await client.get("/monitoring/api/alerts")).json()["alerts"]
    assert "pool_near_max" not in {a["key"] for a in alerts}


async def test_it_exports_our_metrics_after_a_chat(people, staff, chat_client):
    async with chat_client(people["alice"]) as chat:
        await chat.answer("Where do zebras migrate?")
    client = await staff_client(staff)
    text = (await client.get("/metrics")).content.decode()
    for name in (
        "docchat_time_to_first_token_seconds_count",
        "docchat_answer_seconds_bucket",
        "docchat_retrieval_seconds_count",
        "docchat_query_embedding_seconds_count",
        "docchat_tokens_streamed_total",
        'docchat_answers_total{status="complete"}',
        "docchat_db_pool_in_use",
        "docchat_event_loop_lag_seconds",
        "docchat_websocket_connections",
    ):
        assert name in text, name
    summary = (await client.get("/monitoring/api/summary")).json()
    assert summary["latency"]["total"]["count"] >= 1 and summary["llm"]["provider"] == "groq"
