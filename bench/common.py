"""What the benchmark scripts share: Django on a bench database, the machine's load and processes'
CPU, the run's header, statistics and table cells.

Imported as ``bench.common``, never as ``common``: that is the product's package (``common/aio.py``,
``common/db.py``), which the product's own modules import while a benchmark runs them in-process. So
each script, run as a file, puts the project root first on ``sys.path`` in place of its own folder
``bench/`` (which Python put there): ``common`` then only ever means the product's package.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# --- Django on a bench database ---------------------------------------------------------------
def use_bench_database(env: MutableMapping[str, str], database: str) -> None:
    """Point ``env`` (this process's environment, or a copy for a server) at ``database`` of the
    embedded PostgreSQL: a benchmark must never write into the database DATABASE_URL names."""
    env.pop("DATABASE_URL", None)
    # With DEBUG off the settings need a real key: one per bench run unless given, the same for
    # the bench's own process (which signs the session cookies) and the servers it starts.
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
    env.update(
        EMBEDDED_PG_DB=database,
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_SECRET_KEY=os.environ["DJANGO_SECRET_KEY"],
    )


def setup_django(database: str) -> None:
    """Django set up in this process on ``database`` of the embedded PostgreSQL, migrated."""
    use_bench_database(os.environ, database)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


# --- machine load, processes' CPU -------------------------------------------------------------
def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far (all cores, idle and iowait excluded)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces): [0] is the
    state, [1] the parent's pid, [11]/[12] user/system CPU ticks, [13]/[14] those of its reaped
    children, [19] the start time."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """User + system CPU time of a process (all its threads) so far; with ``reaped_children``, plus
    that of its children that have exited and been waited for."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def start_time(pid: int) -> int | None:
    """When a process started (in ticks since boot), which tells it apart from a later one given
    the same pid; None if it no longer exists."""
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now, found by walking the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):  # exited meanwhile
            continue
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU time so far of ``root`` and all its descendants, those that exited included (a child's
    time moves into its parent's reaped-children figure when it is waited for, so the sum does not
    drop when a worker process exits)."""
    total = 0.0
    for pid in process_tree(root):
        try:
            total += cpu_seconds(pid, reaped_children=True)
        except (OSError, IndexError, ValueError):  # exited meanwhile
            continue
    return total


def busy_percent(seconds: float) -> float:
    """How busy the machine is over the next ``seconds``, in % of one core."""
    before = machine_cpu_seconds()
    time.sleep(seconds)
    return 100 * (machine_cpu_seconds() - before) / seconds


def other_benchmarks() -> list[str]:
    """Python processes running one of the bench/ scripts, other than this one."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if (
            words
            and "python" in Path(words[0]).name
            and any(w.startswith("bench/") or "/bench/" in w for w in words[1:2])
        ):
            found.append(f"{pid}: {' '.join(words)[:80]}")
    return found


def add_wait_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=1200,
        help="wait up to this many seconds for load < 1 before timing (0: do not wait)",
    )


def wait_until_quiet(limit: float) -> str:
    """Wait (at most ``limit`` s; 0: not at all) for load average < 1, under 25 % of one core busy over
    5 s and no other benchmark running, twice in a row ~30 s apart (a test suite has short pauses);
    return a line describing the load when timing starts."""
    if limit <= 0:
        return "load not checked"
    started = time.monotonic()
    streak = 0
    while True:
        busy = busy_percent(5.0)
        load = os.getloadavg()[0]
        others = other_benchmarks()
        quiet = load < 1.0 and busy < 25 and not others
        streak = streak + 1 if quiet else 0
        waited = time.monotonic() - started
        if streak >= 2 or waited >= limit:
            state = "quiet" if quiet else f"NOT quiet after waiting {waited:.0f} s"
            return (
                f"load before timing: {state}: loadavg(1 min) {load:.2f}, {busy:.0f}% of one core "
                f"busy over 5 s, other benchmarks: {others or 'none'} (waited {waited:.0f} s)"
            )
        print(
            f"  waiting for a quiet machine: loadavg {load:.2f}, busy {busy:.0f}%, "
            f"other benchmarks {len(others)} ({waited:.0f}/{limit:.0f} s)",
            flush=True,
        )
        time.sleep(25)


# --- the run's header -------------------------------------------------------------------------
def command_line() -> str:
    """This run's command, ready to paste into a shell."""
    return shlex.join([sys.executable, *sys.argv])


def code_version(describe_changes: bool = True) -> str:
    """The commit measured, and whether the work tree differed from it; with ``describe_changes``,
    also in how many files and a hash of the diff, which tells such states apart."""

    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--untracked-files=no")
        version = f"git {git('rev-parse', '--short', 'HEAD')}"
        if not changed:
            return version
        if not describe_changes:
            return f"{version} + uncommitted changes"
        diff = hashlib.sha256(git("diff", "HEAD").encode()).hexdigest()[:12]
        return f"{version} + uncommitted changes in {len(changed.splitlines())} files (diff sha256 {diff})"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def print_header(command: str) -> None:
    """The machine, the command and the commit: what a reader needs to compare or repeat a run."""
    print(
        f"machine: nproc={len(os.sched_getaffinity(0))} (os.cpu_count={os.cpu_count()}, "
        f"{platform.machine()}, {platform.system()} {platform.release()}), Python {platform.python_version()}"
    )
    print(f"command: {command}")
    print(f"code:    {code_version()}")


# --- statistics and table cells -----------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


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
