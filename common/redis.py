"""Redis as the project uses it: one timeout for every client, and one fallback policy.

A Redis that hangs must not hang a chat, so our clients give up after ``REDIS_TIMEOUT`` seconds.
A store shared through Redis (rate limits, circuit breakers) that cannot reach it falls back to
this process's memory for ``FALLBACK_SECONDS`` before trying Redis again, logged and visible in
monitoring, rather than failing or stalling the chat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)
FALLBACK_SECONDS = 30.0


def timeout_options() -> dict[str, Any]:
    """Keyword arguments for a redis-py client (or pool) built from ``settings.REDIS_URL``."""
    return {"socket_timeout": settings.REDIS_TIMEOUT, "socket_connect_timeout": settings.REDIS_TIMEOUT}


def url_with_timeouts(url: str) -> str:
    """``url`` carrying the same timeouts, for libraries that only take a URL."""
    separator = "&" if "?" in url else "?"
    query = "&".join(f"{name}={value}" for name, value in timeout_options().items())
    return f"{url}{separator}{query}"


def ping() -> None:
    """Raise if Redis does not answer within the timeout (readiness)."""
    if not settings.REDIS_URL:
        raise RuntimeError("REDIS_URL is not set")
    sync_client().ping()


def async_client():
    """A redis-py asyncio client for ``settings.REDIS_URL`` (create one per event loop)."""
    import redis.asyncio

    if not settings.REDIS_URL:
        raise RuntimeError("REDIS_URL is not set")
    return redis.asyncio.Redis.from_url(settings.REDIS_URL, **timeout_options())


class LocalFallback:
    """Whether a Redis-shared store of this process is on local memory for now, and until when."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.until = 0.0

    @property
    def active(self) -> bool:
        return time.monotonic() < self.until

    def start(self) -> None:
        logger.warning("Redis unreachable for %s; using this process's memory for %ss", self.what, FALLBACK_SECONDS)
        self.until = time.monotonic() + FALLBACK_SECONDS


def sync_client():
    """The process's redis-py client for ``settings.REDIS_URL``, for code outside an event loop
    (readiness, sign-out broadcasts): thread-safe, one connection pool, so a probe every few
    seconds does not open a new connection each time."""
    if not settings.REDIS_URL:
        raise RuntimeError("REDIS_URL is not set")
    return _client_for(settings.REDIS_URL)


@lru_cache(maxsize=4)
def _client_for(url: str):
    import redis

    return redis.Redis.from_url(url, **timeout_options())


async def listen(
    client,
    handlers: dict[str, Callable[[bytes], object]],
    wanted: Callable[[], bool],
    *,
    what: str,
    tick: Callable[[], Awaitable[None]] | None = None,
    retry_in: float = 5.0,
) -> None:
    """Stay subscribed to the channels of ``handlers`` while ``wanted()``, handing each message's
    data to its channel's handler, and awaiting ``tick()`` about once a second. One such
    subscription per process and purpose (never one per socket); when Redis drops it, it waits
    ``retry_in`` seconds and subscribes again."""
    from redis.exceptions import RedisError

    pubsub = client.pubsub()
    try:
        while wanted():
            try:
                if not pubsub.subscribed:
                    await pubsub.subscribe(*handlers)
                if tick is not None:
                    await tick()
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message and message.get("type") == "message":
                    _handle(handlers, message)
            except (RedisError, OSError):
                logger.warning("%s lost Redis; retrying in %ss", what, retry_in)
                await pubsub.aclose()  # forgets the connection; the next subscribe takes a new one
                await asyncio.sleep(retry_in)  # back-off before reconnecting
    finally:
        await pubsub.aclose()


def _handle(handlers: dict[str, Callable[[bytes], object]], message: dict) -> None:
    """One message to its handler; a handler's failure is logged, and the subscription goes on."""
    try:
        handlers[message["channel"].decode()](message["data"])
    except Exception:
        logger.exception("handling a Redis message on %s failed", message.get("channel"))
