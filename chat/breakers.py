"""Circuit breakers (purgatory) for the LLM, query embedding and retrieval.

After ``threshold`` consecutive failures a breaker opens: calls fail at once for ``ttl`` seconds
instead of piling up behind a dead dependency; then one trial call decides whether it closes.
With REDIS_URL the state lives in Redis, shared by every server process; if Redis is unreachable
the breaker falls back to this process's memory (``common.redis``; shown in monitoring).
"""

from __future__ import annotations

import asyncio
import time
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
# Stopping an answer (cancellation) is the user's choice, not a failure of the dependency.
NOT_FAILURES = (asyncio.CancelledError,)


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
    threshold: int
    ttl: float


def config(name: str) -> BreakerConfig:
    upper = name.upper()
    return BreakerConfig(
        getattr(settings, f"BREAKER_{upper}_THRESHOLD"),
        getattr(settings, f"BREAKER_{upper}_TTL"),
    )


class Breakers:
    """The breakers of one event loop: shared (Redis) when configured, local memory otherwise."""

    def __init__(self) -> None:
        self.local = _factory(AsyncInMemoryUnitOfWork())
        self.shared = None
        if settings.REDIS_URL:
            self.shared = _factory(AsyncRedisUnitOfWork(url_with_timeouts(settings.REDIS_URL)))
        self.fallback = LocalFallback("circuit breakers")
        self.last_errors: dict[str, tuple[float, str]] = {}

    def factory(self) -> AsyncCircuitBreakerFactory:
        return self.shared if self.shared is not None and not self.fallback.active else self.local

    @asynccontextmanager
    async def guard(self, name: str) -> AsyncIterator[None]:
        """Run the body under breaker ``name``; raises ``CircuitOpen`` at once while it is open."""
        cfg = config(name)
        try:
            breaker = await self._breaker(name, cfg)
            await breaker.__aenter__()
        except OpenedState as opened:
            raise CircuitOpen(name, max(0.0, opened.opened_at + cfg.ttl - time.time())) from None
        try:
            yield
        except BaseException as exc:
            if not isinstance(exc, NOT_FAILURES):
                self.last_errors[name] = (
                    time.time(),
                    f"{type(exc).__name__}: {exc}"[:300],
                )
            await self._exit(breaker, type(exc), exc)
            raise
        await self._exit(breaker, None, None)

    async def _breaker(self, name: str, cfg: BreakerConfig):
        try:
            return await self.factory().get_breaker(name, cfg.threshold, cfg.ttl)
        except OpenedState:
            raise
        except Exception:
            self.fallback.start()
            return await self.local.get_breaker(name, cfg.threshold, cfg.ttl)

    async def _exit(self, breaker, exc_type, exc) -> None:
        try:
            await breaker.__aexit__(exc_type, exc, None)
        except Exception:
            self.fallback.start()  # recording the outcome in Redis failed; the answer goes on

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
        last = self.last_errors.get(name)
        return {
            "name": name,
            "state": state,
            "failures": (context.failure_count or 0) if context else 0,
            "threshold": cfg.threshold,
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
        cfg = config(name)
        async with self.factory().uow as uow:
            await uow.contexts.register(Context(name, cfg.threshold, cfg.ttl))
            await uow.contexts.reset_failure(name)
        self.last_errors.pop(name, None)


def _factory(uow: AsyncAbstractUnitOfWork) -> AsyncCircuitBreakerFactory:
    return AsyncCircuitBreakerFactory(uow=uow, exclude=list(NOT_FAILURES))


breakers = per_loop(Breakers)
