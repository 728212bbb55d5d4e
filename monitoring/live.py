"""Live figures of this server process: event-loop lag, DB pool, and one hour of samples for the
dashboard's charts. A sampler task runs on the server's event loop, started by ``SamplerMiddleware``
on the first connection of any kind (never at import)."""

from __future__ import annotations

import asyncio
import atexit
import os
import time
from collections import deque

from django.conf import settings
from django.db import connections
from prometheus_client import multiprocess

from chat.slots import generation_slots
from common.aio import per_loop

from . import metrics

SAMPLE_EVERY = 10.0  # seconds between chart points: 360 points = one hour
LAG_PROBE_EVERY = 0.5


def pool_stats() -> dict:
    """psycopg_pool's own figures for the default database (zeros before the first connection)."""
    # ``pool`` (Django 5.1+, postgresql backend) is not declared by django-stubs 5.2.9.
    pool = connections["default"].pool  # type: ignore[attr-defined]
    if pool is None:
        return {"enabled": False}
    stats = pool.get_stats()
    size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
    return {
        "enabled": True,
        "min": pool.min_size,
        "max": pool.max_size,
        "size": size,
        "idle": available,
        "in_use": size - available,
        "waiting": stats.get("requests_waiting", 0),
        "requests": stats.get("requests_num", 0),
        "timeouts": stats.get("requests_errors", 0),
        "timeout_seconds": settings.DB_POOL_TIMEOUT,
    }


class Sampler:
    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.lag = 0.0
        self.max_lag = 0.0
        self.lags: deque[tuple[float, float]] = deque(maxlen=1200)  # (time, lag): the last 10 minutes
        self.samples: deque[dict] = deque(maxlen=360)
        self._answers_seen = 0
        self._errors_seen = 0

    def ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        next_sample = time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PROBE_EVERY)  # the probe: how late does the loop wake us?
            self.lag = max(0.0, time.monotonic() - before - LAG_PROBE_EVERY)
            self.max_lag = max(self.max_lag, self.lag)
            self.lags.append((time.time(), self.lag))
            metrics.LOOP_LAG.set(self.lag)
            if time.monotonic() >= next_sample:
                self.samples.append(self.snapshot())
                next_sample += SAMPLE_EVERY

    def max_lag_since(self, since: float) -> float:
        """The worst lag measured since the Unix time ``since`` (within the last 10 minutes)."""
        return max((lag for at, lag in self.lags if at >= since), default=0.0)

    def snapshot(self, record: bool = True) -> dict:
        """One chart point; also refreshes the gauges Prometheus scrapes. ``record=False`` only
        refreshes the gauges (the answer and error counts of the next point stay whole)."""
        pool = pool_stats()
        slots = generation_slots()
        answers = metrics.answers_finished()
        errors = sum(metrics.errors_by_code().values())
        point = {
            "t": round(time.time(), 1),
            "pool_in_use": pool.get("in_use", 0),
            "pool_waiting": pool.get("waiting", 0),
            "active_generations": slots.active,
            "queued": slots.queued,
            "loop_lag_ms": round(self.lag * 1000, 1),
            "answers": answers - self._answers_seen,
            "errors": errors - self._errors_seen,
            "p95_total": metrics.rolling["total"].summary()["p95"],
            "p95_first_token": metrics.rolling["first_token"].summary()["p95"],
            "tokens": metrics.tokens_streamed(),
        }
        if record:
            self._answers_seen, self._errors_seen = answers, errors
        metrics.POOL_SIZE.set(pool.get("size", 0))
        metrics.POOL_IN_USE.set(pool.get("in_use", 0))
        metrics.POOL_WAITING.set(pool.get("waiting", 0))
        metrics.ACTIVE_GENERATIONS.set(slots.active)
        metrics.QUEUE_DEPTH.set(slots.queued)
        return point


sampler = per_loop(Sampler)


class SamplerMiddleware:
    """ASGI middleware: makes sure the sampler of the serving event loop runs (a cheap check per
    connection), so the charts have history whether or not anyone watches the dashboard."""

    def __init__(self, app) -> None:
        self.app = app
        if settings.PROMETHEUS_MULTIPROC_DIR:
            # A worker that exits takes its live gauges (connections, generations, pool) with it.
            atexit.register(multiprocess.mark_process_dead, os.getpid())

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            sampler().ensure_running()
        return await self.app(scope, receive, send)
