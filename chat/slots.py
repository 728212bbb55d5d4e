"""Generation slots: bounded concurrency for answers. A fixed number of slots, then a FIFO queue
whose position each waiting user is told; waiting longer than the queue timeout is an error, not a
hang. Also the per-user count of answers in progress. (The per-minute question rate limit is
``ratelimit.py``.)"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from django.conf import settings
from redis.exceptions import RedisError

from common import redis
from common.aio import per_loop
from common.redis import LocalFallback

from .actions import answer_deadline_seconds
from .errors import ChatError
from .llm import get_provider


class GenerationQueueTimeout(ChatError):
    code = "busy"
    user_message = "The server is busy; your question waited too long for a free slot. Please retry."


class GenerationSlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(
        self, timeout: float, on_queued: Callable[[int], Awaitable[None]] | None = None
    ) -> AsyncIterator[None]:
        """Hold one slot for the body; ``on_queued(position)`` is awaited if the caller must wait."""
        if self.active < self.capacity and not self._waiters:
            self.active += 1
        else:
            await self._wait_for_handoff(timeout, on_queued)
        try:
            yield
        finally:
            self._release()

    async def _wait_for_handoff(self, timeout: float, on_queued) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            if on_queued is not None:
                await on_queued(len(self._waiters))
            async with asyncio.timeout(timeout):
                await asyncio.shield(waiter)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as we gave up: pass it on
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise GenerationQueueTimeout() from None
            raise
        # on success the releasing holder kept ``active`` unchanged: the slot is now ours

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1


def _make_slots() -> GenerationSlots:
    capacity = settings.MAX_CONCURRENT_GENERATIONS
    provider_cap = get_provider().max_concurrency
    return GenerationSlots(min(capacity, provider_cap) if provider_cap else capacity)


generation_slots = per_loop(_make_slots)


class TooManyGenerations(ChatError):
    code = "too_many_generations"

    def __init__(self) -> None:
        super().__init__(
            user_message=f"You already have {settings.MAX_GENERATIONS_PER_USER} answers in progress; "
            "wait for one to finish or stop it."
        )


class UserGenerations:
    """Answers in progress per user: in Redis when configured, so every server process counts the
    same user, else in this process. Taking a place is atomic (no check-then-count across an
    await), so several sockets of one user asking at the same moment cannot all slip through."""

    def __init__(self) -> None:
        self.local: Counter[int] = Counter()
        self.shared = redis.async_client() if settings.REDIS_URL else None
        self.fallback = LocalFallback("per-user answer limits")

    async def acquire(self, user_id: int) -> Callable[[], Awaitable[None]]:
        """Count one more answer in progress for ``user_id`` or raise ``TooManyGenerations``;
        returns the coroutine function that gives the place back (await it when the answer ends)."""
        if self.shared is not None and not self.fallback.active:
            try:
                return await self._acquire_shared(self.shared, user_id)
            except RedisError:
                self.fallback.start()
        return self._acquire_local(user_id)

    def _acquire_local(self, user_id: int) -> Callable[[], Awaitable[None]]:
        if self.local[user_id] >= settings.MAX_GENERATIONS_PER_USER:
            raise TooManyGenerations()
        self.local[user_id] += 1

        async def release() -> None:
            self.local[user_id] -= 1
            if self.local[user_id] <= 0:
                del self.local[user_id]

        return release

    async def _acquire_shared(self, client, user_id: int) -> Callable[[], Awaitable[None]]:
        key = f"docchat:generations:{user_id}"
        async with client.pipeline(transaction=True) as pipe:
            # The expiry forgets the places of a process that died without giving them back.
            count, _ = await pipe.incr(key).expire(key, int(answer_deadline_seconds())).execute()
        if count > settings.MAX_GENERATIONS_PER_USER:
            await client.decr(key)
            raise TooManyGenerations()

        async def release() -> None:
            try:
                await client.decr(key)
            except RedisError:
                pass  # the key's expiry gives the place back

        return release


user_generations = per_loop(UserGenerations)
