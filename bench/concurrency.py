"""Concurrency benchmark: how answer latency grows with the number of simultaneous chats.

What it measures, in one run and side by side for each concurrency level N (default 1, 10, 50,
100, 200): N authenticated WebSocket clients connect to a real daphne server, then all send one
question at the same moment; each records the time from its ``ask`` to the first ``delta`` frame
(time to first token) and to the ``finish`` frame (total), and any error: an ``error`` frame, a
finish status other than ``complete``, a timeout, a failed connection, or a crossover (the answer
does not echo this client's own question). The table reports p50/p95 of both times, the error
count, and p95(N) / p50(1) of the total time: 1.0 means N chats are served as fast as one.

Everything is local and real except the LLM: daphne + Channels + the embedded PostgreSQL (its own
database, ``docchat_bench``) + MiniLM retrieval, and the groq SDK streaming over HTTP from the fake
Groq server (``tests/fakes/groq_server.py``: 50 tokens, 20 ms apart, so one answer streams ~1 s).
Level 1 is run a few times in a row (``--solo-runs``) so its p50, the baseline, is not one sample.

The clients, daphne and the fake LLM share this machine's cores: on a 2-core machine the clients'
own work is part of what is measured.

Run from the project folder (takes a few minutes; exits non-zero if a server crashed)::

    .venv/bin/python bench/concurrency.py [--levels 1,10,50,100,200]

Daphne's and the fake server's output go to files under /tmp (printed at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a file: the project root, not bench/, first on sys.path (see bench/common.py)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import (
    ROOT,
    busy_percent,
    code_version,
    command_line,
    machine_cpu_seconds,
    percentile,
    setup_django,
    use_bench_database,
)

BIN = ROOT / ".venv" / "bin"
BENCH_DB = "docchat_bench"
USER_PREFIX = "bench-user-"
COLLECTION = "bench-public"

DOCS = {
    "lighthouse.md": "# Harbor lighthouse\n\nThe Kestrel Point lighthouse was built in 1874 from granite blocks "
    "quarried on the island. Its lamp is visible for 22 nautical miles and flashes white every 6 seconds.\n\n"
    "## Keepers\n\nThe last keeper, Mara Lindqvist, left in 1986 when the light was automated.",
    "bakery.md": "# Sourdough at the Millstone bakery\n\nThe Millstone bakery feeds its sourdough starter twice a "
    "day with rye flour. Loaves proof for 14 hours in the cold room before baking at 250 degrees.\n\n"
    "## Opening hours\n\nThe bakery opens at 7 in the morning and closes when the bread is sold out.",
    "orchard.md": "# Apple orchard care\n\nThe orchard grows 40 varieties of apple. Trees are pruned in late "
    "winter and the harvest starts in September.\n\n## Pests\n\nCodling moth is controlled with pheromone "
    "traps hung in May.",
}
QUESTIONS = [
    "When was the Kestrel Point lighthouse built?",
    "How far is the lighthouse lamp visible?",
    "How often is the sourdough starter fed at the Millstone bakery?",
    "How long do the loaves proof before baking?",
    "When are the apple trees pruned?",
    "How is codling moth controlled in the orchard?",
]


# --- command line -----------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,10,50,100,200", help="comma-separated concurrency levels")
    parser.add_argument("--solo-runs", type=int, default=5, help="sequential runs of level 1 (the baseline)")
    add_server_arguments(parser)
    args = parser.parse_args()
    args.levels = [int(level) for level in args.levels.split(",") if level.strip()]
    if not args.levels or min(args.levels) < 1:
        parser.error("--levels needs positive integers")
    return args


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the servers and clients (this script's and ``bench/faults.py``'s)."""
    parser.add_argument("--tokens", type=int, default=50, help="tokens per healthy fake answer")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between fake tokens")
    parser.add_argument("--db-pool-max", type=int, default=10, help="DB_POOL_MAX for daphne")
    parser.add_argument("--max-generations", type=int, default=300, help="MAX_CONCURRENT_GENERATIONS")
    parser.add_argument("--answer-timeout", type=float, default=60.0, help="seconds one client waits for finish")
    parser.add_argument("--connect-timeout", type=float, default=20.0, help="seconds to open one WebSocket")
    parser.add_argument("--log-dir", default="/tmp", help="where daphne's and the fake server's logs go")


# --- Django side: database, users, documents, sessions ----------------------------------------
def bench_env() -> dict[str, str]:
    """The environment of this process and of daphne: the embedded Postgres, its bench database."""
    env = dict(os.environ)
    use_bench_database(env, BENCH_DB)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def prepare_database(users: int) -> list[str]:
    """Migrate the bench database, ingest the documents, log ``users`` users in; their cookies."""
    setup_django(BENCH_DB)
    from django.db import connections

    bench_users = ensure_users(users)
    ensure_documents(owner=bench_users[0])
    cookies = [session_cookie(user) for user in bench_users]
    connections.close_all()
    return cookies


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


def ensure_documents(owner) -> None:
    """A public collection with the bench documents (re-ingesting identical files is a no-op)."""
    from documents.actions import do_ingest_file
    from documents.models import Collection

    collection, _ = Collection.objects.get_or_create(name=COLLECTION, defaults={"owner": owner, "is_public": True})
    with tempfile.TemporaryDirectory(prefix="docchat-bench-") as folder:
        for name, text in DOCS.items():
            path = Path(folder) / name
            path.write_text(text)
            document = do_ingest_file(path, collection).document
            if document.status != "ready":
                raise SystemExit(f"ingesting {name} failed: {document.error}")


def session_cookie(user) -> str:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


# --- subprocesses ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def stop(process: subprocess.Popen | None) -> None:
    """Terminate (then kill) a subprocess we started, bounded in time."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def http_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@dataclass
class Servers:
    groq_port: int
    daphne_port: int
    groq_cmd: list[str]
    daphne_cmd: list[str]
    groq_log: Path
    daphne_log: Path
    groq: subprocess.Popen | None = None
    daphne: subprocess.Popen | None = None

    @property
    def groq_url(self) -> str:
        return f"http://127.0.0.1:{self.groq_port}"

    @property
    def daphne_url(self) -> str:
        return f"http://127.0.0.1:{self.daphne_port}"

    def crashed(self) -> list[str]:
        return [
            f"{name} exited with code {proc.returncode}"
            for name, proc in (("fake Groq server", self.groq), ("daphne", self.daphne))
            if proc is not None and proc.poll() is not None
        ]

    def reset_llm_stats(self, args: argparse.Namespace) -> None:
        http_json(f"{self.groq_url}/_reset", {})
        http_json(f"{self.groq_url}/_config", {"tokens": args.tokens, "delay": args.delay})

    def llm_stats(self) -> dict:
        return http_json(f"{self.groq_url}/_stats")


def plan_servers(args: argparse.Namespace) -> Servers:
    groq_port, daphne_port = free_port(), free_port()
    log_dir = Path(args.log_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Servers(
        groq_port=groq_port,
        daphne_port=daphne_port,
        groq_cmd=[
            str(BIN / "python"),
            "-m",
            "tests.fakes.groq_server",
            "--port",
            str(groq_port),
            "--tokens",
            str(args.tokens),
            "--delay",
            str(args.delay),
        ],
        daphne_cmd=[
            str(BIN / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(daphne_port),
            "config.asgi:application",
        ],
        groq_log=log_dir / f"docchat-bench-{stamp}-groq.log",
        daphne_log=log_dir / f"docchat-bench-{stamp}-daphne.log",
    )


def daphne_env(args: argparse.Namespace, servers: Servers) -> dict[str, str]:
    return bench_env() | {
        "LLM_PROVIDER": "groq",
        "GROQ_API_KEY": "bench",
        "GROQ_BASE_URL": servers.groq_url,
        "GROQ_MODEL": "fake-model",
        "DB_POOL_MAX": str(args.db_pool_max),
        "MAX_CONCURRENT_GENERATIONS": str(args.max_generations),
    }


def start_servers(args: argparse.Namespace, servers: Servers) -> None:
    servers.groq = spawn(servers.groq_cmd, bench_env(), servers.groq_log)
    wait_http(f"{servers.groq_url}/_stats", servers.groq, timeout=30)
    servers.daphne = spawn(servers.daphne_cmd, daphne_env(args, servers), servers.daphne_log)
    wait_http(f"{servers.daphne_url}/healthz", servers.daphne, timeout=90)


# --- the WebSocket clients ---------------------------------------------------------------------
@dataclass
class Result:
    question: str
    connect: float | None = None  # seconds to open the WebSocket
    ack: float | None = None  # seconds from ask to the ack frame (the question is stored)
    first_token: float | None = None  # seconds from ask to the first delta frame
    total: float | None = None  # seconds from ask to the finish frame
    errors: list[str] = field(default_factory=list)
    server: dict[str, float] = field(default_factory=dict)  # the finish frame's timings (from after ack)
    status: str | None = None  # the finish frame's status
    echo: str | None = None  # the text the fake LLM echoes back, if not the question itself


async def open_socket(url: str, origin: str, cookie: str, timeout: float, result: Result):
    from websockets.asyncio.client import connect

    started = time.perf_counter()
    try:
        socket_ = await connect(
            url,
            origin=origin,
            additional_headers={"Cookie": cookie},
            open_timeout=timeout,
            proxy=None,
            max_size=2**22,
            close_timeout=2,
        )
    except Exception as exc:  # refused, handshake rejected, timeout
        result.errors.append(f"connect: {type(exc).__name__}")
        return None
    result.connect = time.perf_counter() - started
    return socket_


async def ask(socket_, result: Result, timeout: float) -> None:
    """Send the question, read frames until ``finish``; fill ``result``."""
    frame = {
        "type": "ask",
        "conversation_id": None,
        "text": result.question,
        "client_id": str(uuid.uuid4()),
    }
    answer_id = None
    started = time.perf_counter()
    try:
        await socket_.send(json.dumps(frame))
        async with asyncio.timeout(timeout):
            while True:
                reply = json.loads(await socket_.recv())
                kind = reply.get("type")
                if kind == "ack":
                    result.ack = time.perf_counter() - started
                    answer_id = reply.get("answer_id")
                elif kind in ("delta", "finish") and reply.get("answer_id") != answer_id:
                    note(result, "crossover")  # a frame of another answer on this socket
                if kind == "delta" and result.first_token is None:
                    result.first_token = time.perf_counter() - started
                elif kind == "error":
                    result.errors.append(f"error frame: {reply.get('code')}")
                elif kind == "finish":
                    result.total = time.perf_counter() - started
                    result.server = reply.get("timings") or {}
                    result.status = reply.get("status")
                    check_finish(reply, result)
                    return
    except TimeoutError:
        result.errors.append("timeout")
    except Exception as exc:  # connection closed mid-answer
        result.errors.append(f"receive: {type(exc).__name__}")


def check_finish(frame: dict, result: Result) -> None:
    text = frame.get("text", "")
    if frame.get("status") != "complete":
        result.errors.append(f"finish status: {frame.get('status')}")
    elif text.startswith("I could not find"):
        result.errors.append("not found (retrieval found nothing, the LLM was not called)")
    elif f"«{result.echo or result.question}»" not in text:
        note(result, "crossover")  # not this client's own answer (the fake LLM echoes it)


def note(result: Result, error: str) -> None:
    if error not in result.errors:
        result.errors.append(error)


async def client(url: str, origin: str, cookie: str, go: asyncio.Event, result: Result, args) -> None:
    """One user: connect, wait for the start signal, ask, close."""
    socket_ = await open_socket(url, origin, cookie, args.connect_timeout, result)
    try:
        await go.wait()
        if socket_ is not None:
            await ask(socket_, result, args.answer_timeout)
    finally:
        if socket_ is not None:
            await socket_.close()


async def run_level(
    n: int, cookies: list[str], servers: Servers, args, tag: str = "", results: list[Result] | None = None
) -> list[Result]:
    """N clients connect, wait for every other one, then all ask at once (client i asks
    ``results[i].question``; by default the bench questions, numbered after ``tag``)."""
    url = f"ws://127.0.0.1:{servers.daphne_port}/ws/chat/"
    origin = servers.daphne_url
    go = asyncio.Event()
    if results is None:
        results = [Result(f"{QUESTIONS[i % len(QUESTIONS)]} #{tag}{i}") for i in range(n)]
    tasks = [asyncio.create_task(client(url, origin, cookies[i], go, results[i], args)) for i in range(n)]
    await wait_until_connected(results, args.connect_timeout + 5)
    go.set()
    _, pending = await asyncio.wait(tasks, timeout=args.answer_timeout + args.connect_timeout + 15)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if result.total is None and not result.errors:
            result.errors.append("timeout")
    return results


async def wait_until_connected(results: list[Result], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(r.connect is not None or r.errors for r in results):
            return
        await asyncio.sleep(0.02)


# --- statistics and the table -------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use of named processes, and of the whole machine, over a wall-clock window, as % of
    one core (the machine's includes Postgres and anything else running meanwhile)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = time.monotonic()
        self.before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.machine_before = machine_cpu_seconds()

    def percent(self) -> dict[str, float]:
        wall = time.monotonic() - self.start
        used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        used["machine"] = machine_cpu_seconds() - self.machine_before
        return {name: 100 * seconds / wall for name, seconds in used.items()}


@dataclass
class LevelSummary:
    n: int
    runs: int
    results: list[Result]
    llm_peak: int
    cpu: dict[str, float] = field(default_factory=dict)

    def ok(self, attr: str) -> list[float]:
        return [getattr(r, attr) for r in self.results if not r.errors and getattr(r, attr) is not None]

    def server(self, stage: str) -> list[float]:
        return [r.server[stage] for r in self.results if not r.errors and stage in r.server]

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if r.errors)

    def error_kinds(self) -> Counter:
        return Counter(error for r in self.results for error in r.errors)


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def print_heading(header: str) -> None:
    """A table's header line, underlined."""
    print(header)
    print("-" * len(header))


LATENCY_HEADER = f"{'ttft p50':>9} {'ttft p95':>9} {'total p50':>10} {'total p95':>10}"


def latency_cells(first_token: list[float], total: list[float]) -> str:
    """The cells under ``LATENCY_HEADER``: p50 and p95 of the times to first token and in total."""
    p50_p95 = [fmt(percentile(times, q)) for times in (first_token, total) for q in (50, 95)]
    return f"{p50_p95[0]:>9} {p50_p95[1]:>9} {p50_p95[2]:>10} {p50_p95[3]:>10}"


def print_table(summaries: list[LevelSummary]) -> None:
    """One row per level; cpu% is each process's CPU over the level's wall time (100 = one core;
    'machine' is all of it: ours, Postgres's and any other work running meanwhile)."""
    solo = next((s for s in summaries if s.n == 1), None)
    baseline = percentile(solo.ok("total"), 50) if solo else None
    header = (
        f"{'N':>4} {'runs':>4} {'answers':>7} {'errors':>6} {LATENCY_HEADER} "
        f"{'p95/p50(1)':>10} {'connect p95':>11} {'llm peak':>8}"
        f"  cpu% daphne/llm/clients/machine"
    )
    print_heading(header)
    for s in summaries:
        p95 = percentile(s.ok("total"), 95)
        latency = latency_cells(s.ok("first_token"), s.ok("total"))
        print(
            f"{s.n:>4} {s.runs:>4} {len(s.results):>7} {s.errors:>6} {latency} "
            f"{ratio(p95, baseline):>10} {fmt(percentile(s.ok('connect'), 95)):>11} {s.llm_peak:>8}"
            f"  {'/'.join(f'{s.cpu[k]:.0f}' for k in ('daphne', 'llm', 'clients', 'machine'))}"
        )
    print_breakdown(summaries)
    for s in summaries:
        if s.errors:
            kinds = ", ".join(f"{kind} x{count}" for kind, count in s.error_kinds().most_common())
            print(f"  N={s.n}: {kinds}")


SERVER_STAGES = ("embedding", "retrieval", "first_token", "total")


def print_breakdown(summaries: list[LevelSummary]) -> None:
    """Where the time goes, p50 per level: ack as the client saw it, then the server's own timings
    (``chat.answering``; they count from the answer task's start, just after the ack is sent)."""
    print()
    print("p50 breakdown:  N   ack (question stored)  server: " + "  ".join(f"{s:>11}" for s in SERVER_STAGES))
    for s in summaries:
        stages = "  ".join(f"{fmt(percentile(s.server(stage), 50)):>11}" for stage in SERVER_STAGES)
        print(f"             {s.n:>4}   {fmt(percentile(s.ok('ack'), 50)):>21}          {stages}")


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
    print(f"server:   {shlex.join(servers.daphne_cmd)}")
    print(
        f"          with EMBEDDED_PG_DB={BENCH_DB} DB_POOL_MAX={args.db_pool_max} "
        f"MAX_CONCURRENT_GENERATIONS={args.max_generations} LLM_PROVIDER=groq GROQ_MODEL=fake-model"
    )


# --- the run ---------------------------------------------------------------------------------
async def measure(args, servers: Servers, cookies: list[str], summaries: list[LevelSummary]) -> None:
    """Warm up (loads the embedding model), then each level in turn; appends to ``summaries`` so
    the levels measured so far survive a failure."""
    warm = await run_level(1, cookies, servers, args, tag="warmup-")
    if warm[0].errors:
        raise RuntimeError(f"the warm-up chat failed: {warm[0].errors} (see {servers.daphne_log})")
    for n in args.levels:
        servers.reset_llm_stats(args)
        runs = args.solo_runs if n == 1 else 1
        results: list[Result] = []
        peak = 0
        cpu = CpuMeter(
            {
                "daphne": servers.daphne.pid,
                "llm": servers.groq.pid,
                "clients": os.getpid(),
            }
        )
        for run in range(runs):
            results += await run_level(n, cookies, servers, args, tag=f"{n}.{run}-")
            peak = max(peak, servers.llm_stats()["max_active"])
            await asyncio.sleep(0.5)  # let the last writes settle before the next run
        summaries.append(LevelSummary(n, runs, results, peak, cpu.percent()))
        print(f"  N={n}: done ({sum(1 for r in results if r.errors)} errors)", flush=True)
        if servers.crashed():
            break


def still_serving(servers: Servers) -> list[str]:
    """Problems with the servers after the run: exited, or daphne no longer answering."""
    problems = servers.crashed()
    if not problems:
        try:
            wait_http(f"{servers.daphne_url}/healthz", servers.daphne, timeout=10)
        except RuntimeError as exc:
            problems.append(f"daphne unresponsive: {exc}")
    return problems


def report_logs(servers: Servers) -> None:
    for name, path in (("daphne", servers.daphne_log), ("fake LLM", servers.groq_log)):
        text = path.read_text(errors="replace") if path.exists() else ""
        print(
            f"{name} log: {path} ({text.count('Traceback')} tracebacks, "
            f"{sum(1 for line in text.splitlines() if ' ERROR ' in line or ' WARNING ' in line)} warning/error lines)"
        )


def main() -> int:
    args = parse_args()
    servers = plan_servers(args)
    print_machine(args, servers)
    print("preparing the bench database, users and documents ...", flush=True)
    cookies = prepare_database(max(args.levels))
    summaries: list[LevelSummary] = []
    failure = ""
    try:
        start_servers(args, servers)
        print("servers up; warming up and measuring ...", flush=True)
        asyncio.run(measure(args, servers, cookies, summaries))
    except Exception as exc:  # reported below, after the table of what was measured
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        problems = still_serving(servers) if servers.daphne else []
        stop(servers.daphne)
        stop(servers.groq)
    print()
    print_table(summaries)
    report_logs(servers)
    if failure:
        print(f"BENCHMARK FAILED: {failure}")
    if problems:
        print("SERVER CRASHED: " + "; ".join(problems))
    return 1 if failure or problems else 0


if __name__ == "__main__":
    sys.exit(main())
