"""Faults under load: what a failing LLM does to N concurrent chats, next to a healthy baseline.

In one run, side by side: N authenticated WebSocket chats (default 100) against a real server
(``--server``: uvicorn by default) all ask at the same moment, first with a healthy fake LLM (the
baseline, fail rate 0), then with ``--fail-rate`` of the questions (default 20 %) making the fake
Groq server answer HTTP 500 (``[[fake mode=error status=500]]`` in the question; the others carry
``[[fake tokens=50 delay=0.02]]``). Before measuring, one chat loads the embedding model and a
healthy burst of N fills the DB and HTTP pools; then ``--rounds`` pairs (default 3) run with the
order alternating (baseline first, then faults first, ...) so neither phase always follows the
other. The LLM circuit breaker is reset (through the staff monitoring API) before each phase so
every phase starts with it closed.

Reported per phase:

- p50/p95 of the time to first token and of the total time, over every answer that finished (a
  degraded answer is an answer too), then split by final status; p95(faults) / p95(no faults);
- the error rate: chats whose answer did not end ``complete`` (expected: ``degraded``, i.e. cited
  passages instead of generated text, for the failing LLM calls only: the breaker opens on a
  failure *rate* over a sliding window, 50 % of >= 10 calls in 30 s by default), with counts per
  final status, as the clients saw them and as stored; and ``healthy !llm``, the questions without
  the error directive that did not get the LLM's answer (the target: 0);
- with ``--outage``, a third phase where every LLM call fails: how many seconds into it the
  breaker was seen open, and how many calls reached the dead LLM;
- lost messages: the questions and answers stored in the database during this run (found by a
  unique run tag in the question text) against the number sent -- must be equal -- and the
  answers left unfinished (``pending``) -- must be 0;
- the max event-loop lag of the server during the phase: ``loop_lag_ms`` of
  ``/monitoring/api/summary``, polled every 0.5 s by ``monitoring.client.MonitoringClient`` as a
  staff user (``bench-staff``, created in the bench database).

Servers, database, users and clients are those of ``bench/concurrency.py`` (``bench/servers.py``,
``bench/clients.py``): the server + the fake Groq server as subprocesses, the embedded PostgreSQL
with its own database ``docchat_bench``. Run from the project folder (a few minutes; exits
non-zero if a message was lost, an answer left unfinished, or a server crashed)::

    .venv/bin/python bench/faults.py [--chats 100] [--fail-rate 0.2] [--rounds 3] [--outage]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a file: the project root, not bench/, first on sys.path (see bench/common.py)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.clients import Result, run_level
from bench.common import LATENCY_HEADER, fmt, latency_cells, percentile, print_heading, ratio
from bench.concurrency import STAFF_USER, prepare_database, print_machine
from bench.corpus import TINY
from bench.observe import process_meter
from bench.servers import (
    Servers,
    add_server_arguments,
    check_server_arguments,
    plan_servers,
    report_logs,
    start_servers,
    still_serving,
    stop_servers,
)

POLL_EVERY = 0.5
UNFINISHED = "pending"  # an answer's status until it ends, one way or another
STAGES = ("ack", "slot", "embedding", "retrieval", "first_token", "total")


# --- command line -----------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=100, help="concurrent chats per phase")
    parser.add_argument("--fail-rate", type=float, default=0.2, help="share of questions whose LLM call fails")
    parser.add_argument(
        "--rounds", type=int, default=3, help="baseline + faults pairs (order alternates: b f, f b, b f ...)"
    )
    parser.add_argument("--seed", type=int, default=0, help="picks which questions fail")
    parser.add_argument(
        "--outage", action="store_true", help="also a phase where every LLM call fails: how soon the breaker opens"
    )
    parser.add_argument(
        "--warmup-chats", type=int, default=None, help="healthy chats at once before measuring (default: --chats)"
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=30.0,
        help="seconds to wait after the run for unfinished answers before counting them",
    )
    parser.add_argument(
        "--asyncio-debug",
        action="store_true",
        help="diagnosis: the server in asyncio debug mode (logs callbacks that block its loop >100 ms; slower)",
    )
    add_server_arguments(parser)
    args = parser.parse_args()
    check_server_arguments(parser, args)
    if args.chats < 1 or args.rounds < 1 or not 0 <= args.fail_rate <= 1:
        parser.error("--chats and --rounds must be positive, --fail-rate in 0..1")
    if args.warmup_chats is None:
        args.warmup_chats = args.chats
    if not 0 <= args.warmup_chats <= args.chats:
        parser.error("--warmup-chats must be in 0..--chats")
    return args


# --- one phase ----------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    key: str  # in the run tag of its questions
    fail_rate: float
    results: list[Result] = field(default_factory=list)
    failing: int = 0  # questions sent with the error directive
    lags: list[tuple[float, float]] = field(default_factory=list)  # (s after the phase started, loop_lag_ms.last)
    lag_max_rose_to: float | None = None  # loop_lag_ms.max, when it rose during the phase
    round_rose_to: float | None = None  # the same, in the current round
    per_round_lag: list[float] = field(default_factory=list)  # max loop lag, per round
    polls_failed: list[str] = field(default_factory=list)
    polls_skipped: int = 0  # not sent: 4 polls were still waiting for the server
    per_round: list[int] = field(default_factory=list)  # answers not complete, per round
    llm_states: Counter = field(default_factory=Counter)  # the LLM breaker's state per poll
    llm_requests: int = 0  # calls that reached the fake LLM
    opened_after: dict[int, float] = field(default_factory=dict)  # round -> s into it when seen open first
    round: int = 0
    round_started: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    stored: dict = field(default_factory=dict)  # counted in the database after the run

    def finished(self, status: str | None = None) -> list[Result]:
        return [r for r in self.results if r.total is not None and (status is None or r.status == status)]

    def times(self, attr: str, status: str | None = None) -> list[float]:
        return [getattr(r, attr) for r in self.finished(status) if getattr(r, attr) is not None]

    def statuses(self) -> Counter:
        return Counter(r.status if r.total is not None else "no finish" for r in self.results)

    @property
    def not_complete(self) -> int:
        return sum(1 for r in self.results if r.status != "complete")

    @property
    def healthy_not_complete(self) -> int:
        """Questions without the error directive whose answer was not the LLM's (the target: 0)."""
        return sum(1 for r in self.results if "mode=error" not in r.question and r.status != "complete")

    def other_errors(self) -> Counter:
        """Client-side problems besides the expected ones (status and the LLM's error frame)."""
        expected = ("finish status:", "error frame: llm_unavailable")
        return Counter(e for r in self.results for e in r.errors if not e.startswith(expected))

    @property
    def lag_max(self) -> float | None:
        seen = [lag for _, lag in self.lags]
        if self.lag_max_rose_to is not None:
            seen.append(self.lag_max_rose_to)
        return max(seen) if seen else None

    def stage(self, name: str, status: str) -> list[float]:
        """Seconds to ``name``: the ack as the client saw it, else the server's own timings."""
        if name == "ack":
            return [r.ack for r in self.finished(status) if r.ack is not None]
        return [r.server[name] for r in self.finished(status) if name in r.server]


def directive(failing: bool, args: argparse.Namespace) -> str:
    return "[[fake mode=error status=500]]" if failing else f"[[fake tokens={args.tokens} delay={args.delay}]]"


def questions_for(phase: Phase, round_: int, run_tag: str, args, rng: random.Random) -> list[Result]:
    """The phase's questions: ``fail_rate`` of them, picked at random, make the LLM fail."""
    failing = set(rng.sample(range(args.chats), round(args.chats * phase.fail_rate)))
    phase.failing += len(failing)
    results = []
    for i in range(args.chats):
        echo = TINY.numbered(i, f"{tag_of(run_tag, phase)}{round_}-")
        results.append(Result(f"{directive(i in failing, args)} {echo}", echo=echo))
    return results


def tag_of(run_tag: str, phase: Phase) -> str:
    return f"{run_tag}{phase.key}"


# --- the staff monitoring client -----------------------------------------------------------------
async def monitoring_client(servers: Servers):
    """A fresh MonitoringClient (its session lasts 5 minutes); it writes the session in a thread."""
    from monitoring.client import MonitoringClient

    return await asyncio.wait_for(asyncio.to_thread(MonitoringClient, servers.server_url, STAFF_USER), 15)


async def call(function, *args, timeout: float = 12.0):
    """A blocking client call off the clients' event loop, bounded in time."""
    return await asyncio.wait_for(asyncio.to_thread(function, *args), timeout)


async def poll_summary(client, phase: Phase, stop_polling: asyncio.Event, lag_max_before: float) -> None:
    """A poll every 0.5 s on a fixed schedule until told to stop (a slow reply does not delay the
    next poll; at most 4 wait at once): the server's loop lag and LLM breaker state."""
    started = time.monotonic()
    in_flight: set[asyncio.Task] = set()
    while not stop_polling.is_set():
        if len(in_flight) < 4:
            task = asyncio.create_task(poll_once(client, phase, lag_max_before, started))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        else:
            phase.polls_skipped += 1
        try:
            await asyncio.wait_for(stop_polling.wait(), POLL_EVERY)
        except TimeoutError:
            pass
    if in_flight:
        await asyncio.wait(in_flight, timeout=15)


async def poll_once(client, phase: Phase, lag_max_before: float, started: float) -> None:
    try:
        summary = await call(client.get, "summary")
        lag = summary["loop_lag_ms"]
        phase.lags.append((time.monotonic() - started, lag["last"]))
        if lag["max"] > lag_max_before:  # a probe missed by the polls can only show here
            phase.lag_max_rose_to = max(lag["max"], phase.lag_max_rose_to or 0.0)
            phase.round_rose_to = max(lag["max"], phase.round_rose_to or 0.0)
        llm = next((b for b in summary["breakers"] if b["name"] == "llm"), {})
        phase.llm_states[llm.get("state", "?")] += 1
        if llm.get("state") == "opened":
            phase.opened_after.setdefault(phase.round, time.monotonic() - phase.round_started)
    except Exception as exc:  # noted in the report: a gap in the lag samples
        phase.polls_failed.append(f"{type(exc).__name__}: {exc}"[:120])


async def run_phase(phase: Phase, round_: int, run_tag: str, cookies, servers: Servers, args, rng) -> None:
    client = await monitoring_client(servers)
    await call(client.reset_breaker, "llm")  # every phase starts with the LLM breaker closed
    await call(servers.reset_llm_stats, args)
    lag_max_before = (await call(client.get, "summary"))["loop_lag_ms"]["max"]
    results = questions_for(phase, round_, run_tag, args, rng)
    stop_polling = asyncio.Event()
    first_sample, phase.round_rose_to = len(phase.lags), None
    phase.round, phase.round_started = round_, time.monotonic()
    poller = asyncio.create_task(poll_summary(client, phase, stop_polling, lag_max_before))
    cpu = process_meter(servers)
    try:
        results = await run_level(args.chats, cookies, servers, args, results=results)
        phase.results += results
        phase.per_round.append(sum(1 for r in results if r.status != "complete"))
    finally:
        stop_polling.set()
        await asyncio.wait_for(poller, 30)
        lags = [lag for _, lag in phase.lags[first_sample:]] + [phase.round_rose_to or 0.0]
        phase.per_round_lag.append(max(lags))
    phase.cpu = cpu.percent()  # the last round's
    phase.llm_requests += (await call(servers.llm_stats))["requests"]
    await asyncio.sleep(1.0)  # let the last writes settle before the next phase


async def measure(args, servers: Servers, cookies: list[str], phases: list[Phase], run_tag: str) -> None:
    """A warm-up (one chat: loads the embedding model; then ``--warmup-chats`` at once, healthy:
    fills the DB and HTTP pools), then the phases, alternating their order round by round."""
    warm = await run_level(1, cookies, servers, args, tag=f"{run_tag}w-")
    if warm[0].errors:
        raise RuntimeError(f"the warm-up chat failed: {warm[0].errors} (see {servers.server_log})")
    if args.warmup_chats > 1:
        warm = await run_level(args.warmup_chats, cookies, servers, args, tag=f"{run_tag}W-")
        print(f"  warm-up burst of {len(warm)}: {sum(1 for r in warm if r.errors)} errors", flush=True)
        await asyncio.sleep(1.0)
    rng = random.Random(args.seed)
    for round_ in range(args.rounds):
        for phase in phases if round_ % 2 == 0 else phases[::-1]:
            await run_phase(phase, round_, run_tag, cookies, servers, args, rng)
            print(
                f"  round {round_ + 1} {phase.name}: done ({dict(phase.statuses())} so far)",
                flush=True,
            )
            if servers.crashed():
                return


# --- counting in the database ----------------------------------------------------------------------
def count_stored(phases: list[Phase], run_tag: str, settle_timeout: float) -> None:
    """Questions and answers of this run in the database, per phase; waits (bounded) for answers
    still unfinished, then counts what is left unfinished."""
    from django.db import connections

    from chat.models import Message

    def answers(phase: Phase):
        return Message.objects.filter(
            role=Message.Role.ASSISTANT, reply_to__text__contains=f"#{tag_of(run_tag, phase)}"
        )

    deadline = time.monotonic() + settle_timeout
    try:
        while time.monotonic() < deadline:
            if not any(answers(p).filter(status=UNFINISHED).exists() for p in phases):
                break
            time.sleep(0.5)
        for phase in phases:
            tag = f"#{tag_of(run_tag, phase)}"
            stored = answers(phase)
            phase.stored = {
                "questions": Message.objects.filter(role=Message.Role.USER, text__contains=tag).count(),
                "answers": stored.count(),
                "status": Counter(stored.values_list("status", flat=True)),
                "error_code": Counter(c or "-" for c in stored.values_list("error_code", flat=True)),
            }
    finally:
        connections.close_all()


# --- the report ----------------------------------------------------------------------------------
def print_report(phases: list[Phase], args) -> None:
    baseline = phases[0]
    base_p95 = percentile(baseline.times("total"), 95)
    base_p95_ok = percentile(baseline.times("total", "complete"), 95)
    header = (
        f"{'phase':<10} {'fail':>5} {'chats':>5} {'not complete':>12} {LATENCY_HEADER} "
        f"{'p95/base':>8} {'loop lag max':>12} {'lost q/a':>8} {'pending':>7} {'llm calls':>9} {'healthy !llm':>12}"
    )
    print_heading(header)
    for p in phases:
        p95 = percentile(p.times("total"), 95)
        sent = len(p.results)
        lost = f"{sent - p.stored.get('questions', 0)}/{sent - p.stored.get('answers', 0)}" if p.stored else "?"
        pending = p.stored["status"][UNFINISHED] if p.stored else "?"
        rate = f"{p.not_complete} {100 * p.not_complete / sent:.0f}%" if sent else "-"
        lag = f"{p.lag_max:.0f} ms" if p.lag_max is not None else "-"
        latency = latency_cells(p.times("first_token"), p.times("total"))
        print(
            f"{p.name:<10} {p.fail_rate:>5.0%} {sent:>5} {rate:>12} {latency} "
            f"{ratio(p95, base_p95):>8} {lag:>12} {lost:>8} {pending!s:>7} {p.llm_requests:>9} "
            f"{p.healthy_not_complete:>12}"
        )
    print("(healthy !llm: questions without the error directive that did not get the LLM's answer)")
    for p in phases:
        if p.opened_after:
            seen = ", ".join(f"round {r + 1}: {t:.1f} s" for r, t in sorted(p.opened_after.items()))
            print(f"  {p.name}: the LLM breaker was first seen open (polls every {POLL_EVERY} s) {seen} into the round")
    print()
    print("by final status (as the clients saw it):")
    print(f"  {'phase':<10} {'status':<10} {'count':>5} {LATENCY_HEADER}")
    for p in phases:
        for status, count in sorted(p.statuses().items(), key=lambda kv: -kv[1]):
            latency = latency_cells(p.times("first_token", status), p.times("total", status))
            print(f"  {p.name:<10} {status:<10} {count:>5} {latency}")
    print()
    print("where the time goes, p50 / p95 (ack as the client saw it; the rest: the server's timings, from the")
    print("answer task's start just after the ack):")
    print(f"  {'phase':<10} {'status':<10} " + " ".join(f"{name:>17}" for name in STAGES))
    for p in phases:
        for status in sorted({r.status for r in p.finished()}, key=lambda s: -len(p.finished(s))):
            cells = [
                f"{fmt(percentile(p.stage(name, status), 50))} / {fmt(percentile(p.stage(name, status), 95))}"
                for name in STAGES
            ]
            print(f"  {p.name:<10} {status:<10} " + " ".join(f"{c:>17}" for c in cells))
    print()
    faults = phases[1]
    print(
        f"p95 total (all answers) faults/no faults: {ratio(percentile(faults.times('total'), 95), base_p95)}; "
        f"complete answers only: {ratio(percentile(faults.times('total', 'complete'), 95), base_p95_ok)}"
    )
    print()
    print("stored in the database (this run's tag):")
    for p in phases:
        if not p.stored:
            print(f"  {p.name}: not counted")
            continue
        statuses = ", ".join(f"{s} {n}" for s, n in p.stored["status"].most_common())
        codes = ", ".join(f"{c} {n}" for c, n in p.stored["error_code"].most_common())
        print(
            f"  {p.name:<10} sent {len(p.results)} (with the error directive {p.failing}), acked "
            f"{sum(1 for r in p.results if r.ack is not None)}; stored questions {p.stored['questions']}, "
            f"answers {p.stored['answers']}: {statuses}; error codes: {codes}"
        )
    print()
    print("server's event-loop lag (loop_lag_ms.last, polled every 0.5 s) and the LLM breaker, per phase:")
    for p in phases:
        states = ", ".join(f"{s} x{n}" for s, n in p.llm_states.most_common())
        rose = f"; loop_lag_ms.max rose to {p.lag_max_rose_to} ms" if p.lag_max_rose_to is not None else ""
        worst = max(p.lags, key=lambda sample: sample[1], default=None)
        at = f" (max {worst[1]:.0f} ms, {worst[0]:.1f} s into its round)" if worst else ""
        print(
            f"  {p.name:<10} polls {len(p.lags)} ok, {len(p.polls_failed)} failed, {p.polls_skipped} skipped; "
            f"samples >= 100 ms: {sum(1 for _, lag in p.lags if lag >= 100)}{at}{rose}; "
            f"llm breaker seen: {states or '-'}; not complete per round: {p.per_round}; "
            f"max lag per round: {[round(lag) for lag in p.per_round_lag]} ms; "
            f"cpu% server/llm/clients/machine (last round) "
            f"{'/'.join(f'{p.cpu.get(k, 0):.0f}' for k in ('server', 'llm', 'clients', 'machine'))}"
        )
        for problem in sorted(set(p.polls_failed))[:3]:
            print(f"      poll failure: {problem}")
        other = p.other_errors()
        if other:
            print(f"      other client errors: {', '.join(f'{e} x{n}' for e, n in other.most_common())}")


def integrity_problems(phases: list[Phase]) -> list[str]:
    problems = []
    for p in phases:
        if not p.stored:
            problems.append(f"{p.name}: the database was not counted")
            continue
        sent = len(p.results)
        if p.stored["questions"] != sent or p.stored["answers"] != sent:
            problems.append(
                f"{p.name}: sent {sent}, stored {p.stored['questions']} questions and {p.stored['answers']} answers"
            )
        unfinished = p.stored["status"][UNFINISHED]
        if unfinished:
            problems.append(f"{p.name}: {unfinished} answers left unfinished")
    return problems


# --- the run ----------------------------------------------------------------------------------
def main() -> int:
    args = parse_args()
    servers = plan_servers(args)
    run_tag = f"r{uuid.uuid4().hex[:8]}"
    print_machine(args, servers)
    print(
        f"faults:   {args.chats} chats x {args.rounds} round(s); fail rate {args.fail_rate:.0%} "
        f"({directive(True, args)}), the others {directive(False, args)}; run tag {run_tag}"
    )
    print("preparing the bench database, users and documents ...", flush=True)
    cookies = prepare_database(args.chats).users
    phases = [Phase("no faults", "b", 0.0), Phase("faults", "f", args.fail_rate)]
    if args.outage:
        phases.append(Phase("outage", "o", 1.0))
    failure = ""
    problems: list[str] = []
    try:
        if args.asyncio_debug:  # the server's environment is this process's, at its start
            os.environ["PYTHONASYNCIODEBUG"] = "1"
        try:
            start_servers(args, servers)
        finally:
            os.environ.pop("PYTHONASYNCIODEBUG", None)
        print("servers up; warming up and measuring ...", flush=True)
        asyncio.run(measure(args, servers, cookies, phases, run_tag))
    except Exception as exc:  # reported below, after the table of what was measured
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            if servers.server:
                problems = still_serving(servers)
                count_stored(phases, run_tag, args.settle_timeout)  # before stopping: a stop saves answers as stopped
        except Exception as exc:
            failure = failure or f"counting in the database failed: {type(exc).__name__}: {exc}"
        finally:
            stop_servers(servers)
    print()
    print_report(phases, args)
    report_logs(servers)
    lost = integrity_problems(phases)
    if lost:
        print("MESSAGES LOST OR UNFINISHED: " + "; ".join(lost))
    if failure:
        print(f"BENCHMARK FAILED: {failure}")
    if problems:
        print("SERVER CRASHED: " + "; ".join(problems))
    return 1 if failure or problems or lost else 0


if __name__ == "__main__":
    sys.exit(main())
