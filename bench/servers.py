"""The processes of a concurrency benchmark: the server under test and the fake Groq server.

The server under test (``--server``) is one of

- ``uvicorn`` (the default): ``manage.py serve``, the product's own server (uvloop, httptools,
  ``--workers`` processes on one port);
- ``daphne``: Channels' server, one process;
- ``gunicorn``: gunicorn with ``uvicorn_worker.UvicornWorker`` workers, only if both packages are
  installed in .venv (the bench installs nothing);
- ``relay`` and ``relay-embed``: not the product but its floor, ``bench/relay.py`` served by uvicorn
  with ``manage.py serve``'s settings: the same protocol, LLM client and coalescing with no database,
  login or retrieval (``relay-embed`` also embeds each question as the product does).

Both run on free ports of 127.0.0.1 against the embedded PostgreSQL's bench database, their output
in log files. The server's connections carry a unique ``DB_APPLICATION_NAME`` so they can be
counted in ``pg_stat_activity``; ``--redis`` gives it a REDIS_URL (several workers share rate
limits and breakers only through Redis), whose database is flushed first so that rate limits or
open breakers of an earlier run do not leak into this one.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import ROOT, process_tree, start_time, use_bench_database

BIN = ROOT / ".venv" / "bin"
# The servers of this bench run show /readyz's checks to whoever presents it.
METRICS_TOKEN = secrets.token_urlsafe(24)
BENCH_DB = "docchat_bench"
HOST = "127.0.0.1"
APP = "config.asgi:application"
SERVER_KINDS = ("uvicorn", "daphne", "gunicorn", "relay", "relay-embed")
RELAY_APPS = {"relay": "app", "relay-embed": "app_with_embedding"}
GUNICORN_MODULES = ("gunicorn", "uvicorn_worker")


# --- command line -----------------------------------------------------------------------------
def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the servers and clients (``bench/concurrency.py``'s and ``bench/faults.py``'s)."""
    parser.add_argument(
        "--server",
        choices=SERVER_KINDS,
        default="uvicorn",
        help="the server under test: uvicorn (manage.py serve), daphne, gunicorn with uvicorn workers, or "
        "the floor: relay / relay-embed (bench/relay.py: no database, login or retrieval)",
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes (uvicorn, gunicorn)")
    parser.add_argument(
        "--redis",
        help="REDIS_URL for the server, needed for --workers > 1; a database other than 0, flushed at the "
        "start (e.g. redis://127.0.0.1:6379/5)",
    )
    parser.add_argument("--tokens", type=int, default=50, help="tokens per healthy fake answer")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between fake tokens")
    parser.add_argument("--db-pool-max", type=int, default=10, help="DB_POOL_MAX for the server (per process)")
    parser.add_argument("--max-generations", type=int, default=300, help="MAX_CONCURRENT_GENERATIONS")
    parser.add_argument("--answer-timeout", type=float, default=60.0, help="seconds one client waits for finish")
    parser.add_argument("--connect-timeout", type=float, default=20.0, help="seconds to open one WebSocket")
    parser.add_argument("--log-dir", default="/tmp", help="where the server's and the fake LLM's logs go")


def check_server_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what the server would refuse, a Redis database the bench must not flush, and gunicorn
    when it is not installed (each exits with status 2)."""
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.server == "daphne" and args.workers > 1:
        parser.error("daphne serves with one process: --workers > 1 needs --server uvicorn or gunicorn")
    if args.workers > 1 and not args.redis and args.server not in RELAY_APPS:
        parser.error("--workers > 1 needs --redis (the product refuses several processes without Redis)")
    if args.redis and redis_database(args.redis) in (None, 0):
        parser.error(f"--redis {args.redis}: name a database other than 0 (the bench flushes it), e.g. /5")
    missing = missing_modules(GUNICORN_MODULES) if args.server == "gunicorn" else []
    if missing:
        parser.error(
            f"--server gunicorn needs the packages gunicorn and uvicorn-worker in {BIN.parent}, missing: "
            f"{', '.join(missing)} (the bench installs nothing; use --server uvicorn or daphne)"
        )


def redis_database(url: str) -> int | None:
    """The database number a redis:// URL names in its path, None if it names none."""
    number = urlsplit(url).path.strip("/")
    return int(number) if number.isdigit() else None


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` the venv's Python cannot import."""
    probe = "import importlib.util, sys; print(' '.join(n for n in sys.argv[1:] if not importlib.util.find_spec(n)))"
    done = subprocess.run([str(BIN / "python"), "-c", probe, *names], capture_output=True, text=True, timeout=30)
    return done.stdout.split() if done.returncode == 0 else list(names)


def flush_redis(url: str) -> None:
    """Empty the bench's Redis database: no rate limit or breaker state of an earlier run survives."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        raise SystemExit(f"cannot flush the bench's Redis database {url}: {exc}") from None
    finally:
        client.close()


# --- subprocesses ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
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
    """Terminate (then kill) a subprocess we started, bounded in time, and any of its worker
    processes it left behind (recognised by pid and start time, so never a stranger's)."""
    if process is None or process.poll() is not None:
        return
    family = {pid: start_time(pid) for pid in process_tree(process.pid)[1:]}
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    for pid, started in family.items():
        if started is not None and start_time(pid) == started:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def http_json(url: str, body: dict | None = None, cookie: str = "", token: str = "") -> dict:
    """GET (or POST ``body``) ``url``, as the session ``cookie`` or with the bearer ``token`` if
    given; its JSON reply."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Cookie": cookie} if cookie else {})
    headers |= {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


# --- the servers -------------------------------------------------------------------------------
@dataclass
class Servers:
    kind: str  # the server under test: one of SERVER_KINDS
    workers: int
    redis: str | None  # its REDIS_URL
    app_name: str  # its DB_APPLICATION_NAME
    groq_port: int
    server_port: int
    groq_cmd: list[str]
    server_cmd: list[str]
    groq_log: Path
    server_log: Path
    groq: subprocess.Popen | None = None
    server: subprocess.Popen | None = None

    @property
    def groq_url(self) -> str:
        return f"http://{HOST}:{self.groq_port}"

    @property
    def server_url(self) -> str:
        return f"http://{HOST}:{self.server_port}"

    @property
    def chat_url(self) -> str:
        return f"ws://{HOST}:{self.server_port}/ws/chat/"

    def crashed(self) -> list[str]:
        return [
            f"{name} exited with code {proc.returncode}"
            for name, proc in (("fake Groq server", self.groq), (self.kind, self.server))
            if proc is not None and proc.poll() is not None
        ]

    def reset_llm_stats(self, args: argparse.Namespace) -> None:
        http_json(f"{self.groq_url}/_reset", {})
        http_json(f"{self.groq_url}/_config", {"tokens": args.tokens, "delay": args.delay})

    def llm_stats(self) -> dict:
        return http_json(f"{self.groq_url}/_stats")

    def model_loaded(self) -> bool:
        """Whether the server process that answered has its embedding model loaded (/readyz)."""
        try:
            reply = http_json(f"{self.server_url}/readyz", token=METRICS_TOKEN)  # the checks are for operators
        except urllib.error.HTTPError as exc:  # 503 (not ready) still lists the checks
            reply = json.loads(exc.read() or b"{}")
        return bool(reply.get("checks", {}).get("embedding_model", {}).get("loaded"))


def plan_servers(args: argparse.Namespace) -> Servers:
    groq_port, server_port = free_port(), free_port()
    log_dir = Path(args.log_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Servers(
        kind=args.server,
        workers=args.workers,
        redis=args.redis,
        app_name=f"docchat-bench-{uuid.uuid4().hex[:8]}",
        groq_port=groq_port,
        server_port=server_port,
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
        server_cmd=server_command(args.server, server_port, args.workers),
        groq_log=log_dir / f"docchat-bench-{stamp}-groq.log",
        server_log=log_dir / f"docchat-bench-{stamp}-{args.server}.log",
    )


def server_command(kind: str, port: int, workers: int) -> list[str]:
    if kind == "daphne":
        return [str(BIN / "daphne"), "-b", HOST, "-p", str(port), APP]
    if kind == "gunicorn":
        worker = "uvicorn_worker.UvicornWorker"
        return [str(BIN / "gunicorn"), "-k", worker, "-w", str(workers), "-b", f"{HOST}:{port}", APP]
    if kind in RELAY_APPS:
        return [
            str(BIN / "python"),
            "-m",
            "bench.relay",
            RELAY_APPS[kind],
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
    serve = ["manage.py", "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]
    return [str(BIN / "python"), *serve]


def bench_env() -> dict[str, str]:
    """The environment of the benchmark's subprocesses: the embedded Postgres, its bench database."""
    env = dict(os.environ)
    use_bench_database(env, BENCH_DB)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def server_env(args: argparse.Namespace, servers: Servers) -> dict[str, str]:
    """The server's settings (the fake LLM, pools, limits, its DB application name, Redis or none)."""
    env = bench_env() | server_settings(args, servers)
    env.pop("REDIS_URL", None)  # never a Redis the bench was not given
    if servers.redis:
        env["REDIS_URL"] = servers.redis
    return env


def server_settings(args: argparse.Namespace, servers: Servers) -> dict[str, str]:
    """The settings the bench gives the server (also printed in the run's header)."""
    return {
        "LLM_PROVIDER": "groq",
        "GROQ_API_KEY": "bench",
        "GROQ_BASE_URL": servers.groq_url,
        "GROQ_MODEL": "fake-model",
        "DB_POOL_MAX": str(args.db_pool_max),
        "MAX_CONCURRENT_GENERATIONS": str(args.max_generations),
        "WEB_CONCURRENCY": str(servers.workers),
        "DB_APPLICATION_NAME": servers.app_name,
        "METRICS_TOKEN": METRICS_TOKEN,
        "READYZ_CACHE_SECONDS": "0",  # asked until the model is loaded in every worker
    }


def start_servers(args: argparse.Namespace, servers: Servers) -> None:
    if servers.redis:
        flush_redis(servers.redis)
    servers.groq = spawn(servers.groq_cmd, bench_env(), servers.groq_log)
    wait_http(f"{servers.groq_url}/_stats", servers.groq, timeout=30)
    servers.server = spawn(servers.server_cmd, server_env(args, servers), servers.server_log)
    wait_http(f"{servers.server_url}/healthz", servers.server, timeout=90)


def still_serving(servers: Servers) -> list[str]:
    """Problems with the servers after the run: exited, or the server no longer answering."""
    problems = servers.crashed()
    if not problems and servers.server is not None:
        try:
            wait_http(f"{servers.server_url}/healthz", servers.server, timeout=10)
        except RuntimeError as exc:
            problems.append(f"{servers.kind} unresponsive: {exc}")
    return problems


def stop_servers(servers: Servers) -> None:
    stop(servers.server)
    stop(servers.groq)


def report_logs(servers: Servers) -> None:
    for name, path in ((servers.kind, servers.server_log), ("fake LLM", servers.groq_log)):
        text = path.read_text(errors="replace") if path.exists() else ""
        print(
            f"{name} log: {path} ({text.count('Traceback')} tracebacks, "
            f"{sum(1 for line in text.splitlines() if ' ERROR ' in line or ' WARNING ' in line)} warning/error lines)"
        )
