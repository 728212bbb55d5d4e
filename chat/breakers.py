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
outcomes are judged here, in a sliding window of this process's calls (as Envoy's outlier
detection judges per proxy), and purgatory is told a failure only when the window trips it or a
trial call fails. A call's success is recorded as soon as it is known (``Call.succeeded``: the
LLM's first token), not when its stream ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from django.conf import settings
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import Context, OpenedState
from purgatory.service._async.unit_of_work import (
    AsyncAbstractUnitOfWork,
    AsyncInMemoryUnitOfWork,
    AsyncRedisUnitOfWork,
)

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
    """Outcomes of the calls that ended in the last ``seconds``, counted in one-second buckets."""

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [second, calls, failures], oldest first

    def record(self, failed: bool, now: float) -> None:
        second = int(now)
        if not self.buckets or self.buckets[-1][0] != second:
            self.buckets.append([second, 0, 0])
        self.buckets[-1][1] += 1
        self.buckets[-1][2] += failed

    def counts(self, seconds: float, now: float) -> tuple[int, int]:
        """(calls, failures) in the last ``seconds``; older buckets are dropped."""
        while self.buckets and self.buckets[0][0] <= now - seconds:
            self.buckets.popleft()
        return sum(b[1] for b in self.buckets), sum(b[2] for b in self.buckets)

    def clear(self) -> None:
        self.buckets.clear()


def trips(window: OutcomeWindow, cfg: BreakerConfig, now: float) -> bool:
    calls, failures = window.counts(cfg.window, now)
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
    """The breakers of one event loop: state shared (Redis) when configured, local memory
    otherwise; the outcome windows are this process's."""

    def __init__(self) -> None:
        self.local = _factory(AsyncInMemoryUnitOfWork())
        self.shared = None
        if settings.REDIS_URL:
            self.shared = _factory(AsyncRedisUnitOfWork(url_with_timeouts(settings.REDIS_URL)))
        self.fallback = LocalFallback("circuit breakers")
        self.windows = {name: OutcomeWindow() for name in NAMES}
        self.last_errors: dict[str, tuple[float, str]] = {}

    def factory(self) -> AsyncCircuitBreakerFactory:
        return self.shared if self.shared is not None and not self.fallback.active else self.local

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
        now = time.time()
        window = self.windows[name]
        if counted:
            window.record(exc is not None, now)
        if exc is not None:
            self.last_errors[name] = (now, f"{type(exc).__name__}: {exc}"[:300])
        trial = breaker.context.state == "half-opened"
        if exc is not None and not trial and trips(window, config(name), now):
            # Set, not counted: a context saved by an older version may carry another threshold.
            breaker.context.set_state(OpenedState(name))
        if breaker.context.state != "closed":
            window.clear()  # a fresh count once it closes again
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
        calls, failures = self.windows[name].counts(cfg.window, time.time())
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
            "shared": self.shared is not None and not self.fallback.active,
        }

    async def reset(self, name: str) -> None:
        """Close breaker ``name`` and forget its failures (the admin's manual reset)."""
        if name not in NAMES:
            raise KeyError(name)
        async with self.factory().uow as uow:
            await uow.contexts.register(Context(name, 1, config(name).ttl))
            await uow.contexts.reset_failure(name)
        self.windows[name].clear()
        self.last_errors.pop(name, None)


def _factory(uow: AsyncAbstractUnitOfWork) -> AsyncCircuitBreakerFactory:
    # Threshold 1: purgatory opens on the one failure it is told, which ``_record`` only reports
    # when the window's rule (or a failed trial call) says the breaker opens.
    return AsyncCircuitBreakerFactory(default_threshold=1, uow=uow)


breakers = per_loop(Breakers)
