"""REDIS_URL set: breaker state and rate limits are shared through a real Redis; when that Redis
dies mid-run, chats keep working on local memory instead of hanging."""

import time

import pytest
from django.test import AsyncClient

from chat.breakers import Breakers
from chat.ratelimit import QuestionLimiter, RateLimited
from tests.conftest import make_staff

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis_mode(settings, redis_server):
    settings.REDIS_URL = redis_server["url"]
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_server["url"]]}}
    }
    return redis_server


async def test_it_shares_breaker_state_between_processes_through_redis(
    redis_mode, settings, people, chat_client, fake_groq
):
    settings.BREAKER_LLM_MIN_CALLS = 2
    settings.BREAKER_LLM_TTL = 600
    fake_groq.configure(mode="error")
    async with chat_client(people["alice"]) as client:
        for _ in range(2):
            await client.answer("Where do zebras migrate?")
    assert redis_mode["client"].get("cbr::llm") is not None
    other_process = Breakers()  # a second server process would build exactly this
    state = {b["name"]: b for b in await other_process.describe()}["llm"]
    assert state["state"] == "opened" and state["shared"] is True


async def test_it_shares_the_rate_limit_between_processes_through_redis(redis_mode, settings, people):
    settings.RATE_LIMIT_PER_MINUTE = 3
    first, second = QuestionLimiter(), QuestionLimiter()  # two server processes
    await first.check(people["alice"].pk)
    await second.check(people["alice"].pk)
    await first.check(people["alice"].pk)
    with pytest.raises(RateLimited) as limited:
        await second.check(people["alice"].pk)
    assert limited.value.retry_after >= 1
    await second.check(people["bob"].pk)  # per user


async def test_it_keeps_chatting_when_redis_dies(redis_mode, settings, people, chat_client):
    staff = await _staff()
    async with chat_client(people["alice"]) as client:
        finish, _ = await client.answer("Where do zebras migrate?")
        assert finish["status"] == "complete"
        redis_mode["process"].kill()
        redis_mode["process"].wait(10)
        started = time.monotonic()
        finish, _ = await client.answer("Where do zebras migrate, again?")
        assert finish["status"] == "complete"
        assert time.monotonic() - started < 10  # bounded by the 1 s Redis timeouts, never a hang
    monitoring = AsyncClient()
    await monitoring.aforce_login(staff)
    summary = (await monitoring.get("/monitoring/api/summary")).json()
    assert summary["redis"] == {"configured": True, "fallback_to_local": True}
    assert "redis_unreachable" in {alert["key"] for alert in summary["alerts"]}
    ready = await monitoring.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"]["ok"] is False


async def _staff():
    from asgiref.sync import sync_to_async

    return await sync_to_async(make_staff)("ops")
