"""What the server under test did during one level of a benchmark: the CPU of its processes (and of
the fake LLM, the clients and the machine), its peak of PostgreSQL connections, and its worst
event-loop lag."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bench.common import cpu_seconds, machine_cpu_seconds, tree_cpu_seconds
from bench.servers import Servers, http_json

T = TypeVar("T")
DB_POLL_EVERY = 0.1


class CpuMeter:
    """CPU seconds used by named processes, and by the whole machine, since the meter was made."""

    def __init__(self, readers: dict[str, Callable[[], float]]) -> None:
        self.readers = readers
        self.start = time.monotonic()
        self.before = {name: read() for name, read in readers.items()} | {"machine": machine_cpu_seconds()}

    def seconds(self) -> dict[str, float]:
        now = {name: read() for name, read in self.readers.items()} | {"machine": machine_cpu_seconds()}
        return {name: now[name] - self.before[name] for name in now}

    def percent(self) -> dict[str, float]:
        """The CPU used as % of one core over the wall time so far (the machine's includes
        PostgreSQL and anything else running meanwhile)."""
        wall = time.monotonic() - self.start
        return {name: 100 * seconds / wall for name, seconds in self.seconds().items()}


def process_meter(servers: Servers) -> CpuMeter:
    """A CpuMeter of the server (all its processes: master and workers), the fake LLM and this
    process (the clients)."""
    assert servers.server is not None and servers.groq is not None
    server, groq = servers.server.pid, servers.groq.pid
    return CpuMeter(
        {
            "server": lambda: tree_cpu_seconds(server),
            "llm": lambda: cpu_seconds(groq),
            "clients": lambda: cpu_seconds(os.getpid()),
        }
    )


class DbConnectionPeak:
    """The most PostgreSQL connections named ``application_name`` open at once while the ``with``
    block runs: ``pg_stat_activity`` polled every 100 ms by a thread (with Django's connection)."""

    QUERY = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"

    def __init__(self, application_name: str) -> None:
        self.application_name = application_name
        self.peak: int | None = None
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="db-connections", daemon=True)

    def __enter__(self) -> DbConnectionPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _poll(self) -> None:
        from django.db import connection

        try:
            while True:
                with connection.cursor() as cursor:
                    cursor.execute(self.QUERY, [self.application_name])
                    self.peak = max(self.peak or 0, cursor.fetchone()[0])
                if self._stop.wait(DB_POLL_EVERY):
                    return
        except Exception as exc:  # reported with the figures, which then stop here
            self.error = f"{type(exc).__name__}: {exc}"[:120]
        finally:
            connection.close()


class LoopLag:
    """The server's worst event-loop lag since a moment: ``loop_lag_ms.max_since`` of GET
    /monitoring/api/summary?lag_since=T, as staff. The figure belongs to one process; with several
    workers each request reaches one of them, so it is read three times per worker and the largest
    kept (best effort: a worker no read reached is not seen). Only read after a level's window: one
    summary costs the server ~14 ms of CPU (measured on the 2-core machine)."""

    def __init__(self, servers: Servers, staff_cookie: str) -> None:
        self.url = f"{servers.server_url}/monitoring/api/summary"
        self.cookie = staff_cookie
        self.reads = 1 if servers.workers == 1 else 3 * servers.workers
        self.error = ""

    def worst(self, since: float) -> float | None:
        seen = []
        for _ in range(self.reads):
            try:
                summary = http_json(f"{self.url}?lag_since={since}", cookie=self.cookie)
                seen.append(float(summary["loop_lag_ms"]["max_since"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"[:120]
        return max(seen, default=None)


@dataclass
class Observation:
    """What the server did over one level's window (the warm-up is never inside one)."""

    wall: float  # seconds
    cpu: dict[str, float]  # CPU seconds: server (all its processes), llm, clients, machine
    db_peak: int | None  # most of the server's connections open at once in PostgreSQL
    db_error: str
    lag_max: float | None  # the worst loop lag (ms) during the level
    lag_error: str  # the last failed read, if any

    def percent(self, name: str) -> float:
        return 100 * self.cpu[name] / self.wall if self.wall else 0.0

    def lag(self) -> str:
        """The level's worst loop lag in ms ("-" if it could not be read)."""
        return "-" if self.lag_max is None else f"{self.lag_max:.0f}"


async def observed(servers: Servers, lag: LoopLag, workload: Awaitable[T]) -> tuple[T, Observation]:
    """Run ``workload`` while measuring the server; the loop lag is read just outside the window, so
    the reads cost the server no CPU inside it."""
    lag.error = ""
    started = time.time()
    meter = process_meter(servers)
    with DbConnectionPeak(servers.app_name) as db:
        outcome = await workload
    wall, cpu = time.monotonic() - meter.start, meter.seconds()
    lag_max = await asyncio.to_thread(lag.worst, started)
    return outcome, Observation(wall, cpu, db.peak, db.error, lag_max, lag.error)
