"""Circuit breakers for the LLM, query embedding and retrieval: purgatory's state, our trip rule.

A breaker opens when at least ``failure_rate`` of the calls that ended in the last ``window``
seconds failed, once there were ``min_calls`` of them; then calls fail at once for ``ttl`` seconds
instead of piling up behind a dead dependency, and trial calls decide whether it closes (the first
to fail re-opens it, the first to succeed closes it). Only failures of the dependency count:
timeouts, connection errors, 5xx, 429 (``blames_dependency``); a request the provider refused
because of what one user asked is that user's error, not a reason to degrade everyone's answers.

purgatory keeps the state (opened, half-opened, closed) -- with REDIS_URL in Redis, shared by every
server process, falling back to this process's memory while Redis is unreachable
(``common.redis``). It only counts consecutive failures, which turned 20 % failing LLM calls into
63 % degraded answers (fast HTTP 500s arrive before the slower successes are recorded), so the
outcomes are judged here, in a sliding window of one-second buckets -- in Redis too, counted by
every server process together (else a breaker behind N processes would need N times the calls to
open) -- and purgatory is told a failure only when the window trips it or a trial call fails. A
call's success is recorded as soon as it is known (``Call.succeeded``: the LLM's first token), not
when its stream ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from django.conf import settings
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import Context, OpenedState
from purgatory.service._async.unit_of_work import (
    AsyncAbstractUnitOfWork,
    AsyncInMemoryUnitOfWork,
    AsyncRedisUnitOfWork,
)
from redis.exceptions import RedisError

from common import redis
from common.aio import per_loop
from common.redis import LocalFallback, url_with_timeouts

from .errors import ChatError

NAMES = ("llm", "embedding", "retrieval")


def blames_dependency(exc: BaseException) -> bool:
    """Whether ``exc`` says the dependency failed (and counts against its breaker). Stopping an
    answer is the user's choice; an error may say it was the request (``blames_dependency =
    False`` on its class, e.g. a Groq HTTP 400 for a question too long for the model)."""
    if isinstance(exc, asyncio.CancelledError):
        return False
    return bool(getattr(exc, "blames_dependency", True))


class CircuitOpen(ChatError):
    """Breaker ``name`` is open: calls fail at once for ``retry_in`` more seconds."""

    def __init__(self, name: str, retry_in: float) -> None:
        super().__init__(
            f"circuit {name} is open", user_message=f"The {name} service is paused after repeated failures."
        )
        self.code = f"{name}_circuit_open"
        self.name = name
        self.retry_in = retry_in


@dataclass(frozen=True)
class BreakerConfig:
    min_calls: int
    failure_rate: float
    window: float
    ttl: float


def config(name: str) -> BreakerConfig:
    upper = name.upper()
    return BreakerConfig(
        getattr(settings, f"BREAKER_{upper}_MIN_CALLS"),
        getattr(settings, f"BREAKER_{upper}_FAILURE_RATE"),
        getattr(settings, f"BREAKER_{upper}_WINDOW"),
        getattr(settings, f"BREAKER_{upper}_TTL"),
    )


class OutcomeWindow:
    """Outcomes of the calls that ended in the last ``seconds``, counted in one-second buckets, in
    this process's memory."""

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [second, calls, failures], oldest first

    async def record(self, failed: bool, now: float, seconds: float) -> tuple[int, int]:
        """Count one outcome; returns (calls, failures) in the last ``seconds``, this one included."""
        second = int(now)
        if not self.buckets or self.buckets[-1][0] != second:
            self.buckets.append([second, 0, 0])
        self.buckets[-1][1] += 1
        self.buckets[-1][2] += failed
        return await self.counts(seconds, now)

    async def counts(self, seconds: float, now: float) -> tuple[int, int]:
        """(calls, failures) in the last ``seconds``; older buckets are dropped."""
        while self.buckets and self.buckets[0][0] <= now - seconds:
            self.buckets.popleft()
        return sum(b[1] for b in self.buckets), sum(b[2] for b in self.buckets)

    async def clear(self) -> None:
        self.buckets.clear()


class SharedOutcomeWindow:
    """The same window in Redis, counted by every server process together: one hash per breaker,
    a field per second and outcome (``c<second>`` calls, ``f<second>`` failures). One round trip
    per outcome counts it and reads the window back; stale fields are deleted on the next one."""

    def __init__(self, client, name: str) -> None:
        self.client, self.key = client, f"docchat:breaker-window:{name}"
        self.stale: list[str] = []

    async def record(self, failed: bool, now: float, seconds: float) -> tuple[int, int]:
        second = int(now)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(self.key, f"c{second}", 1)
            if failed:
                pipe.hincrby(self.key, f"f{second}", 1)
            if self.stale:
                pipe.hdel(self.key, *self.stale)
            pipe.expire(self.key, int(seconds) + 5)
            pipe.hgetall(self.key)
            *_, fields = await pipe.execute()
        return self._sum(fields, seconds, now)

    async def counts(self, seconds: float, now: float) -> tuple[int, int]:
        return self._sum(await self.client.hgetall(self.key), seconds, now)

    async def clear(self) -> None:
        await self.client.delete(self.key)

    def _sum(self, fields: dict, seconds: float, now: float) -> tuple[int, int]:
        totals = {"c": 0, "f": 0}
        self.stale = []
        for field, value in fields.items():
            name = field.decode()
            if int(name[1:]) <= now - seconds:
                self.stale.append(name)
            else:
                totals[name[0]] += int(value)
        return totals["c"], totals["f"]


Window = OutcomeWindow | SharedOutcomeWindow
T = TypeVar("T")


def trips(calls: int, failures: int, cfg: BreakerConfig) -> bool:
    return calls >= cfg.min_calls and failures >= cfg.failure_rate * calls


class Call:
    """One call under a breaker; ``succeeded()`` records its success before the body ends."""

    def __init__(self, breakers: Breakers, name: str, breaker) -> None:
        self._breakers, self._name, self._breaker = breakers, name, breaker
        self.recorded = False

    async def succeeded(self) -> None:
        if not self.recorded:
            self.recorded = True
            await self._breakers._record(self._name, self._breaker, None)

    async def failed(self, exc: BaseException) -> None:
        if not self.recorded:
            self.recorded = True
            await self._breakers._record(self._name, self._breaker, exc)

    async def no_verdict(self) -> None:
        """Ended by the user (stopped) or by its request (rejected): not counted either way."""
        if not self.recorded:
            self.recorded = True
            await self._breakers._record(self._name, self._breaker, None, counted=False)


class Breakers:
    """The breakers of one event loop: state and outcome windows shared (Redis) when configured,
    in this process's memory otherwise."""

    def __init__(self) -> None:
        self.local = _factory(AsyncInMemoryUnitOfWork())
        self.local_windows = {name: OutcomeWindow() for name in NAMES}
        self.shared = None
        if settings.REDIS_URL:
            self.shared = _factory(AsyncRedisUnitOfWork(url_with_timeouts(settings.REDIS_URL)))
            client = redis.async_client()
            self.shared_windows = {name: SharedOutcomeWindow(client, name) for name in NAMES}
        self.fallback = LocalFallback("circuit breakers")
        self.last_errors: dict[str, tuple[float, str]] = {}

    @property
    def sharing(self) -> bool:
        return self.shared is not None and not self.fallback.active

    def factory(self) -> AsyncCircuitBreakerFactory:
        return self.shared if self.shared is not None and not self.fallback.active else self.local

    async def _on_window(self, name: str, use: Callable[[Window], Awaitable[T]]) -> T:
        """``use(window)`` on breaker ``name``'s window: the shared one, or this process's while
        Redis is unreachable."""
        if self.sharing:
            try:
                return await use(self.shared_windows[name])
            except RedisError:
                self.fallback.start()
        return await use(self.local_windows[name])

    @asynccontextmanager
    async def guard(self, name: str) -> AsyncIterator[Call]:
        """Run the body under breaker ``name``; raises ``CircuitOpen`` at once while it is open.
        The body's outcome is recorded when it ends, unless it recorded it earlier on the
        ``Call`` it is given."""
        cfg = config(name)
        try:
            breaker = await self._breaker(name, cfg)
            await breaker.__aenter__()
        except OpenedState as opened:
            raise CircuitOpen(name, max(0.0, opened.opened_at + cfg.ttl - time.time())) from None
        call = Call(self, name, breaker)
        try:
            yield call
        except BaseException as exc:
            await asyncio.shield(call.failed(exc) if blames_dependency(exc) else call.no_verdict())
            raise
        await call.succeeded()

    async def _record(self, name: str, breaker, exc: BaseException | None, counted: bool = True) -> None:
        """Count the outcome; tell purgatory a failure only when it opens the breaker: a failed
        trial call, or a failure rate over the window's threshold."""
        now, cfg = time.time(), config(name)
        calls = failures = 0
        if counted:
            calls, failures = await self._on_window(name, lambda w: w.record(exc is not None, now, cfg.window))
        if exc is not None:
            self.last_errors[name] = (now, f"{type(exc).__name__}: {exc}"[:300])
        trial = breaker.context.state == "half-opened"
        if exc is not None and not trial and trips(calls, failures, cfg):
            # Set, not counted: a context saved by an older version may carry another threshold.
            breaker.context.set_state(OpenedState(name))
        if breaker.context.state != "closed":
            await self._on_window(name, lambda w: w.clear())  # a fresh count once it closes again
        failed_trial = exc is not None and trial  # purgatory re-opens the breaker on it
        try:
            await breaker.__aexit__(type(exc) if failed_trial else None, exc if failed_trial else None, None)
        except Exception:
            self.fallback.start()  # recording the outcome in Redis failed; the answer goes on

    async def _breaker(self, name: str, cfg: BreakerConfig):
        try:
            return await self.factory().get_breaker(name, 1, cfg.ttl)
        except OpenedState:
            raise
        except Exception:
            self.fallback.start()
            return await self.local.get_breaker(name, 1, cfg.ttl)

    async def describe(self) -> list[dict]:
        """State of every breaker, for monitoring."""
        return [await self._describe(name) for name in NAMES]

    async def _describe(self, name: str) -> dict:
        cfg = config(name)
        try:
            async with self.factory().uow as uow:
                context = await uow.contexts.get(name)
        except Exception:
            context = None
        state = context.state if context else "closed"
        opened_at = context.opened_at if context else None
        calls, failures = await self._on_window(name, lambda w: w.counts(cfg.window, time.time()))
        last = self.last_errors.get(name)
        return {
            "name": name,
            "state": state,
            "calls": calls,
            "failures": failures,
            "min_calls": cfg.min_calls,
            "failure_rate": cfg.failure_rate,
            "window": cfg.window,
            "rule": f"opens at {cfg.failure_rate:.0%} of >= {cfg.min_calls} calls in {cfg.window:g} s",
            "ttl": cfg.ttl,
            "retry_in": round(max(0.0, opened_at + cfg.ttl - time.time()), 1)
            if state == "opened" and opened_at
            else None,
            "last_error": last[1] if last else "",
            "last_error_at": last[0] if last else None,
            "shared": self.sharing,
        }

    async def reset(self, name: str) -> None:
        """Close breaker ``name`` and forget its failures (the admin's manual reset)."""
        if name not in NAMES:
            raise KeyError(name)
        async with self.factory().uow as uow:
            await uow.contexts.register(Context(name, 1, config(name).ttl))
            await uow.contexts.reset_failure(name)
        await self._on_window(name, lambda w: w.clear())
        self.last_errors.pop(name, None)


def _factory(uow: AsyncAbstractUnitOfWork) -> AsyncCircuitBreakerFactory:
    # Threshold 1: purgatory opens on the one failure it is told, which ``_record`` only reports
    # when the window's rule (or a failed trial call) says the breaker opens.
    return AsyncCircuitBreakerFactory(default_threshold=1, uow=uow)


breakers = per_loop(Breakers)
