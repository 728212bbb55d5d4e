"""The embedded PostgreSQL stops when the last process using it exits, even when another user was
killed without saying so (its id stayed on the server's list of users) or the last one was stopped
with SIGTERM, as ``make run``'s clean stop does to the worker. Real processes, each on a fresh
server of its own under a temporary DOCCHAT_VAR_DIR."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONNECT_AND_WAIT = (
    "from django.db import connection; connection.ensure_connection(); print('connected', flush=True); "
    "import sys; sys.stdin.read()"  # a user of the database until its input is closed
)

pytestmark = pytest.mark.slow


def start_user(var_dir: Path) -> subprocess.Popen:
    """A manage.py process that joins (or starts) the embedded server under ``var_dir``."""
    env = {**os.environ, "DOCCHAT_VAR_DIR": str(var_dir), "DATABASE_URL": "", "DB_POOL_MIN": "0"}
    process = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", CONNECT_AND_WAIT],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in process.stdout:  # until connected, or the end of its output if it exited
        if line.strip() == "connected":
            return process
    raise AssertionError(process.communicate(timeout=10)[1][-3000:])


def listed_users(var_dir: Path) -> list[int]:
    return json.loads((var_dir / "pg" / ".handle_pids.json").read_text())


def postmaster_pid(var_dir: Path) -> int | None:
    pid_file = var_dir / "pg" / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


def running(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_stopped(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # the postmaster exits once its shutdown completes
    return not running(pid)


@pytest.fixture
def var_dir(tmp_path):
    folder = tmp_path / "var"
    yield folder
    pid = postmaster_pid(folder)
    if running(pid):  # the test failed: do not leave a server behind
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        wait_stopped(pid)


def test_it_stops_the_server_when_the_last_live_user_exits_after_another_was_killed(var_dir):
    survivor = start_user(var_dir)
    killed = start_user(var_dir)
    server = postmaster_pid(var_dir)
    assert running(server) and {survivor.pid, killed.pid} <= set(listed_users(var_dir))

    killed.kill()  # SIGKILL: no exit hook runs, its id stays listed
    killed.wait(10)
    assert killed.pid in listed_users(var_dir)

    survivor.communicate("", timeout=60)  # input closed: exits normally
    assert survivor.returncode == 0
    assert wait_stopped(server), "the server outlived its last live user"
    assert listed_users(var_dir) == []


def test_it_stops_the_server_when_its_last_user_gets_sigterm(var_dir):
    user = start_user(var_dir)
    server = postmaster_pid(var_dir)
    assert running(server)
    user.send_signal(signal.SIGTERM)  # what make run's clean stop sends the worker
    user.communicate(timeout=60)
    assert wait_stopped(server), "a SIGTERM skipped the exit hook that stops the server"
