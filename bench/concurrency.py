"""Concurrency benchmark: how answer latency and server cost grow with the number of simultaneous chats.

Authenticated WebSocket clients chat with a real server (``--server``: uvicorn through ``manage.py
serve`` by default, daphne, or gunicorn with uvicorn workers; ``--workers`` processes). Each client
records the time from its ``ask`` to the first ``delta`` frame (time to first token) and to the
``finish`` frame (total), and any error: a failed connection (counted apart), an ``error`` frame, a
finish status other than ``complete``, a timeout, or a crossover (the answer does not echo this
client's own question). The load has one of three shapes (``--shape``):

- ``burst`` (default): for each level N (default 1, 10, 50, 100, 200), N clients connect, wait for
  every other one, then all ask at the same moment;
- ``storm``: for each level N, N clients start at once and each asks as soon as it is connected (a
  reconnect storm: connections and questions overlap);
- ``open``: open-loop arrivals, for each rate R of ``--rates``: for ``--duration`` s a new client
  arrives at random (Poisson) R times a second on average, connects, asks and closes, whatever the
  others are doing. The levels (default: 1 only) run first, as bursts, for the solo baseline; the
  run ends with the highest rate served with p95 time to first token <= 1 s and no failed chat.

Level 1 is run a few times in a row (``--solo-runs``) so its p50, the baseline, is not one sample.
Per level or rate, besides the latencies: the server's CPU per answered chat (all its processes,
over the level's window), its peak of PostgreSQL connections, and its worst event-loop lag (see the
legend printed under the tables, and ``bench/observe.py``).

Everything is local and real except the LLM: the server + Channels + the embedded PostgreSQL (its own
database, ``docchat_bench``) + MiniLM retrieval over ``--corpus`` (``tiny``: three documents;
``pydoc``: the standard library's documentation, a few thousand chunks; see ``bench/corpus.py``),
and the groq SDK streaming over HTTP from the fake Groq server (``tests/fakes/groq_server.py``: 50
tokens, 20 ms apart, so one answer streams ~1 s). The clients, the server and the fake LLM share this
machine's cores: on a 2-core machine the clients' own work is part of what is measured.

Run from the project folder (takes a few minutes; exits non-zero if a server crashed)::

    .venv/bin/python bench/concurrency.py [--levels 1,10,50,100,200] [--shape burst|storm|open]
        [--server uvicorn|daphne|gunicorn] [--workers N --redis redis://127.0.0.1:6379/5] [--corpus tiny|pydoc]

The server's and the fake LLM's output go to files under /tmp (printed at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a file: the project root, not bench/, first on sys.path (see bench/common.py)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.clients import Result, run_level, run_open
from bench.common import (
    LATENCY_HEADER,
    busy_percent,
    code_version,
    command_line,
    fmt,
    latency_cells,
    percentile,
    print_heading,
    ratio,
    setup_django,
)
from bench.corpus import CORPORA, TINY, Corpus, ensure_corpus
from bench.observe import LoopLag, Observation, observed
from bench.servers import (
    BENCH_DB,
    Servers,
    add_server_arguments,
    check_server_arguments,
    plan_servers,
    report_logs,
    server_settings,
    start_servers,
    still_serving,
    stop_servers,
)

USER_PREFIX = "bench-user-"
STAFF_USER = "bench-staff"
SHAPES = {
    "burst": "N clients connect, then all ask at once",
    "storm": "N clients start at once, each asks as soon as it is connected",
    "open": "Poisson arrivals at R questions/s, each client connects, asks, closes",
}
# Open-loop arrivals spread over enough users that none asks more than once every 20 s on average:
# a user's rate limit (RATE_LIMIT_PER_MINUTE) and generation cap must not be what the run measures.
SECONDS_PER_USER_QUESTION = 20
TTFT_TARGET = 1.0  # seconds: the open-loop run's verdict, the highest rate meeting it at p95


# --- command line -----------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--levels", help="comma-separated concurrency levels (default 1,10,50,100,200; with --shape open: 1)"
    )
    parser.add_argument("--solo-runs", type=int, default=5, help="sequential runs of level 1 (the baseline)")
    parser.add_argument(
        "--shape", choices=SHAPES, default="burst", help="; ".join(f"{k}: {v}" for k, v in SHAPES.items())
    )
    parser.add_argument("--rates", default="1,2,4,8,16", help="open: comma-separated arrival rates, questions/s")
    parser.add_argument("--duration", type=float, default=60.0, help="open: seconds of arrivals per rate")
    parser.add_argument("--corpus", choices=CORPORA, default="tiny", help="the documents searched (bench/corpus.py)")
    add_server_arguments(parser)
    args = parser.parse_args()
    check_server_arguments(parser, args)
    open_loop = args.shape == "open"
    args.levels = numbers(parser, "--levels", args.levels or ("1" if open_loop else "1,10,50,100,200"), int)
    args.rates = numbers(parser, "--rates", args.rates, float) if open_loop else []
    if open_loop and 1 not in args.levels:
        args.levels.insert(0, 1)  # the solo baseline of p95/p50(1)
    if args.duration <= 0:
        parser.error("--duration must be positive")
    return args


def numbers(parser: argparse.ArgumentParser, option: str, text: str, kind: type) -> list:
    """A comma-separated option's positive numbers."""
    try:
        values = [kind(value) for value in text.split(",") if value.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        parser.error(f"{option} needs comma-separated positive numbers")
    return values


def users_needed(args: argparse.Namespace) -> int:
    """Chat users: one per client of the largest level, two per worker for the warm-up, and for
    open-loop arrivals enough that each asks once per SECONDS_PER_USER_QUESTION at the highest rate."""
    return max(max(args.levels), 2 * args.workers, math.ceil(max(args.rates, default=0) * SECONDS_PER_USER_QUESTION))


# --- Django side: database, users, documents, sessions ----------------------------------------
@dataclass
class Logins:
    users: list[str]  # session cookies of the chat users
    staff: str  # the staff user's (the monitoring API)


def prepare_database(users: int, corpus: Corpus = TINY) -> Logins:
    """Migrate the bench database, ingest the corpus, log ``users`` chat users and the staff user in."""
    setup_django(BENCH_DB)
    from django.db import connections

    staff = ensure_staff_user()
    ensure_corpus(corpus, owner=staff)
    logins = Logins([session_cookie(user) for user in ensure_users(users)], session_cookie(staff))
    connections.close_all()
    return logins


def ensure_users(count: int) -> list:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    users = []
    for i in range(count):
        user, created = User.objects.get_or_create(username=f"{USER_PREFIX}{i:03d}")
        if created:
            user.set_unusable_password()  # no password hashing: 200 users would take a minute
            user.save()
        users.append(user)
    return users


def ensure_staff_user():
    """The bench's staff user: reads the monitoring API, owns the bench collections, never chats."""
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username=STAFF_USER)
    if not (user.is_staff and user.is_active) or user.has_usable_password():
        user.is_staff, user.is_active = True, True
        user.set_unusable_password()
        user.save()
    return user


def session_cookie(user) -> str:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


# --- statistics and the tables -------------------------------------------------------------------
@dataclass
class LevelSummary:
    """One level (``n`` clients per run), or one rate of open-loop arrivals (``n`` of them)."""

    n: int
    runs: int
    results: list[Result]
    llm_peak: int
    seen: Observation
    rate: float | None = None  # open: arrivals/s asked for
    elapsed: float | None = None  # open: seconds from the first arrival's schedule to the last client done

    @property
    def label(self) -> str:
        return f"N={self.n}" if self.rate is None else f"R={self.rate:g}/s"

    def ok(self, attr: str) -> list[float]:
        return [getattr(r, attr) for r in self.results if not r.errors and getattr(r, attr) is not None]

    def server(self, stage: str) -> list[float]:
        return [r.server[stage] for r in self.results if not r.errors and stage in r.server]

    @property
    def connect_failures(self) -> int:
        return sum(1 for r in self.results if r.connect_failed)

    @property
    def errors(self) -> int:
        """Chats that failed after connecting."""
        return sum(1 for r in self.results if r.errors and not r.connect_failed)

    @property
    def answered(self) -> int:
        return sum(1 for r in self.results if r.status == "complete")

    def error_kinds(self) -> Counter:
        return Counter(error for r in self.results for error in r.errors)

    def cpu_per_answer(self) -> str:
        if not self.answered:
            return "-"
        return f"{1000 * self.seen.cpu['server'] / self.answered:.0f} ms"

    def achieved(self) -> str:
        return f"{self.answered / self.elapsed:.2f}" if self.elapsed else "-"


CPU_NAMES = ("server", "llm", "clients", "machine")
MEASURES_HEADER = (
    f"{'conn fail':>9} {'errors':>6} {LATENCY_HEADER} {'p95/p50(1)':>10} {'connect p95':>11} {'llm peak':>8} "
    f"{'cpu/answer':>10} {'db peak':>7} {'lag max':>7}  cpu% {'/'.join(CPU_NAMES)}"
)


def measures_cells(s: LevelSummary, baseline: float | None) -> str:
    """The cells under ``MEASURES_HEADER``: what the level/rate tables share."""
    p95 = percentile(s.ok("total"), 95)
    db_peak = "-" if s.seen.db_peak is None else str(s.seen.db_peak)
    return (
        f"{s.connect_failures:>9} {s.errors:>6} {latency_cells(s.ok('first_token'), s.ok('total'))} "
        f"{ratio(p95, baseline):>10} {fmt(percentile(s.ok('connect'), 95)):>11} {s.llm_peak:>8} "
        f"{s.cpu_per_answer():>10} {db_peak:>7} {s.seen.lag():>7}  "
        + "/".join(f"{s.seen.percent(name):.0f}" for name in CPU_NAMES)
    )


def solo_baseline(levels: list[LevelSummary]) -> float | None:
    """p50 of the total time at level 1: the baseline of p95/p50(1)."""
    solo = next((s for s in levels if s.n == 1), None)
    return percentile(solo.ok("total"), 50) if solo else None


def print_levels(levels: list[LevelSummary]) -> None:
    baseline = solo_baseline(levels)
    print_heading(f"{'N':>4} {'runs':>4} {'chats':>5} {MEASURES_HEADER}")
    for s in levels:
        print(f"{s.n:>4} {s.runs:>4} {len(s.results):>5} {measures_cells(s, baseline)}")


def print_rates(rates: list[LevelSummary], baseline: float | None) -> None:
    print_heading(f"{'rate/s':>6} {'arrivals':>8} {'achieved/s':>10} {MEASURES_HEADER}")
    for s in rates:
        print(f"{s.rate:>6g} {s.n:>8} {s.achieved():>10} {measures_cells(s, baseline)}")
    best = best_rate(rates)
    print(
        f"highest rate with p95 time to first token <= {TTFT_TARGET:g} s and no failed chat: "
        + (f"{best.rate:g} questions/s" if best else f"none of {', '.join(f'{s.rate:g}' for s in rates)}")
    )


def best_rate(rates: list[LevelSummary]) -> LevelSummary | None:
    def meets_target(s: LevelSummary) -> bool:
        p95 = percentile(s.ok("first_token"), 95)
        return p95 is not None and p95 <= TTFT_TARGET and not s.errors and not s.connect_failures

    return max(filter(meets_target, rates), key=lambda s: s.rate or 0.0, default=None)


SERVER_STAGES = ("embedding", "retrieval", "first_token", "total")


def print_breakdown(summaries: list[LevelSummary]) -> None:
    """Where the time goes, p50 per level: ack as the client saw it, then the server's own timings
    (``chat.answering``; they count from the answer task's start, just after the ack is sent)."""
    print()
    print("p50 breakdown:         ack (question stored)  server: " + "  ".join(f"{s:>11}" for s in SERVER_STAGES))
    for s in summaries:
        stages = "  ".join(f"{fmt(percentile(s.server(stage), 50)):>11}" for stage in SERVER_STAGES)
        print(f"  {s.label:>12}   {fmt(percentile(s.ok('ack'), 50)):>21}          {stages}")


def print_problems(summaries: list[LevelSummary]) -> None:
    for s in summaries:
        if s.errors or s.connect_failures:
            kinds = ", ".join(f"{kind} x{count}" for kind, count in s.error_kinds().most_common())
            print(f"  {s.label}: {kinds}")
        for name, error in (("DB connections", s.seen.db_error), ("loop lag", s.seen.lag_error)):
            if error:
                print(f"  {s.label}: {name} not measured: {error}")


LEGEND = """\
columns: chats: questions asked (per level: N x runs); conn fail: WebSockets that did not open;
  errors: other failed chats (error frame, status not complete, timeout, crossover; kinds below);
  ttft / total: from the ask to the first token / to the finish frame, chats without error;
  p95/p50(1): total p95 over the solo baseline (total p50 of level 1); connect p95: opening a WebSocket;
  llm peak: most answers streaming from the fake LLM at once; arrivals (open): clients that arrived;
  achieved/s (open): complete answers per second, from the start until the last client was done;
  cpu/answer: CPU of all the server's processes (master and workers) over the level's window (after
  the warm-up), per complete answer; db peak: most of the server's PostgreSQL connections open at
  once (pg_stat_activity by DB_APPLICATION_NAME, polled every 100 ms);
  lag max: worst event-loop lag in ms during the level (loop_lag_ms.max_since of
  /monitoring/api/summary?lag_since=<the level's start>, read after it; the server probes its loop
  every 0.5 s); with several workers it is per worker, best effort (3 reads per worker);
  cpu%: over the level's wall time, 100 = one core; machine = all of it (PostgreSQL and anything else)"""


def print_report(levels: list[LevelSummary], rates: list[LevelSummary]) -> None:
    print_levels(levels)
    if rates:
        print()
        print_rates(rates, solo_baseline(levels))
    print_breakdown(levels + rates)
    print_problems(levels + rates)
    print()
    print(LEGEND)


def print_machine(args: argparse.Namespace, servers: Servers) -> None:
    print(
        f"machine: nproc={len(os.sched_getaffinity(0))} ({platform.machine()}, {platform.system()} "
        f"{platform.release()}), Python {platform.python_version()}"
    )
    print(
        f"machine busy before the run: {busy_percent(2.0):.0f}% of one core over 2 s "
        f"(load average {os.getloadavg()[0]:.2f}); other work on this machine skews the numbers"
    )
    print(f"command: {command_line()}")
    print(f"code:    {code_version(describe_changes=False)}")
    print(f"fake LLM: {shlex.join(servers.groq_cmd)}")
    print(f"server:   {servers.kind}, {servers.workers} process(es): {shlex.join(servers.server_cmd)}")
    settings = " ".join(f"{name}={value}" for name, value in server_settings(args, servers).items())
    print(f"          with EMBEDDED_PG_DB={BENCH_DB} {settings} REDIS_URL={servers.redis or '(none)'}")


def print_loadavg() -> None:
    print(f"load before measuring (/proc/loadavg): {Path('/proc/loadavg').read_text().strip()}", flush=True)


# --- the run ---------------------------------------------------------------------------------
async def warm_up(cookies: list[str], servers: Servers, args, corpus: Corpus) -> None:
    """One chat loads the embedding model; with several workers, bursts of two chats per worker
    follow until /readyz, asked three times per worker, finds the model loaded every time (best
    effort: the kernel picks the worker of each connection)."""
    warm = await run_level(1, cookies, servers, args, tag="warmup-", corpus=corpus)
    if warm[0].errors:
        raise RuntimeError(f"the warm-up chat failed: {warm[0].errors} (see {servers.server_log})")
    if servers.workers == 1:
        return
    for burst in range(10):
        if await asyncio.to_thread(model_loaded_everywhere, servers):
            return
        await run_level(2 * servers.workers, cookies, servers, args, tag=f"warmup{burst}-", corpus=corpus)
    print("  warning: a worker may still be without its embedding model (its first chat will be slow)")


def model_loaded_everywhere(servers: Servers) -> bool:
    return all(servers.model_loaded() for _ in range(3 * servers.workers))


async def measure_level(
    n: int, cookies: list[str], servers: Servers, args, corpus: Corpus, lag: LoopLag
) -> LevelSummary:
    """Level ``n`` (``--solo-runs`` times for 1), observed as one window."""
    servers.reset_llm_stats(args)
    runs = args.solo_runs if n == 1 else 1

    async def level() -> tuple[list[Result], int]:
        results: list[Result] = []
        peak = 0
        for run in range(runs):
            storm = args.shape == "storm"
            results += await run_level(n, cookies, servers, args, tag=f"{n}.{run}-", corpus=corpus, storm=storm)
            peak = max(peak, servers.llm_stats()["max_active"])
            await asyncio.sleep(0.5)  # let the last writes settle before the next run
        return results, peak

    (results, peak), seen = await observed(servers, lag, level())
    return LevelSummary(n, runs, results, peak, seen)


async def measure_rate(
    rate: float, cookies: list[str], servers: Servers, args, corpus: Corpus, lag: LoopLag
) -> LevelSummary:
    """``rate`` arrivals/s for ``--duration`` s, observed as one window."""
    servers.reset_llm_stats(args)
    (results, elapsed), seen = await observed(servers, lag, run_open(rate, cookies, servers, args, corpus))
    return LevelSummary(len(results), 1, results, servers.llm_stats()["max_active"], seen, rate, elapsed)


async def measure(
    args, servers: Servers, logins: Logins, corpus: Corpus, levels: list[LevelSummary], rates: list[LevelSummary]
) -> None:
    """Warm up, then each level and each rate in turn; appends to ``levels`` and ``rates`` so what
    was measured survives a failure."""
    lag = LoopLag(servers, logins.staff)
    await warm_up(logins.users, servers, args, corpus)
    print_loadavg()
    for n in args.levels:
        if not recorded(levels, await measure_level(n, logins.users, servers, args, corpus, lag), servers):
            return
    for rate in args.rates:
        if not recorded(rates, await measure_rate(rate, logins.users, servers, args, corpus, lag), servers):
            return


def recorded(summaries: list[LevelSummary], summary: LevelSummary, servers: Servers) -> bool:
    """Keep ``summary`` and say so; whether the servers are still running."""
    summaries.append(summary)
    failed = f"{summary.connect_failures} connect failures, {summary.errors} other errors"
    print(f"  {summary.label}: done ({failed})", flush=True)
    return not servers.crashed()


def main() -> int:
    args = parse_args()
    corpus = CORPORA[args.corpus]
    servers = plan_servers(args)
    print_machine(args, servers)
    print(f"shape:    {args.shape} ({SHAPES[args.shape]}); levels {args.levels}; corpus {corpus.name}")
    if args.rates:
        print(f"          rates {', '.join(f'{r:g}' for r in args.rates)} questions/s, {args.duration:g} s each")
    print("preparing the bench database, users and documents ...", flush=True)
    logins = prepare_database(users_needed(args), corpus)
    levels: list[LevelSummary] = []
    rate_summaries: list[LevelSummary] = []
    failure = ""
    problems: list[str] = []
    try:
        start_servers(args, servers)
        print("servers up; warming up and measuring ...", flush=True)
        asyncio.run(measure(args, servers, logins, corpus, levels, rate_summaries))
    except Exception as exc:  # reported below, after the table of what was measured
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        problems = still_serving(servers)
        stop_servers(servers)
    print()
    print_report(levels, rate_summaries)
    report_logs(servers)
    if failure:
        print(f"BENCHMARK FAILED: {failure}")
    if problems:
        print("SERVER CRASHED: " + "; ".join(problems))
    return 1 if failure or problems else 0


if __name__ == "__main__":
    sys.exit(main())
