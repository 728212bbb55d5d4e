"""Extraction and chunking of an uploaded file in a child process, within limits.

A hostile or pathological file (a PDF whose content never finishes parsing, megabytes of text
without a full stop) must cost bounded CPU, memory and time, and never take the worker down with
it. Parsing runs in a child process with a CPU-time limit (``RLIMIT_CPU``) and an address-space
limit (``RLIMIT_AS``), and the parent waits for it no longer than a wall-clock timeout; a child
that breaks a limit is killed and replaced, and the document fails with one line naming the limit.

Starting a child costs about a second (Python, pypdf, python-docx, lxml, the tokenizer), so a child
is kept and reused, for CHILD_MAX_TASKS files at most, so that memory a parser leaks does not pile
up. A child is a fresh interpreter: nothing of the parent (database connections, threads of the
embedding engine, the settings) is inherited; the few settings parsing reads are sent with each file.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from django.conf import settings

from . import embedding
from .chunking import ChunkDraft, chunk_sections
from .extract import ExtractionError, extract_sections, title_for

logger = logging.getLogger(__name__)
CHILD_MAX_TASKS = 200
CHILD_START_TIMEOUT = 120.0  # seconds: imports and the tokenizer, on a busy machine
# A niced worker on a busy box gets a fraction of a core: the wall clock allows this many times the
# CPU limit, and only catches a child that hangs without using CPU.
WALL_CLOCK_FACTOR = 3
# What extraction and chunking read from the settings; the child gets the parent's values per file.
CHILD_SETTINGS = ("MAX_PDF_PAGES", "MAX_DOCX_UNCOMPRESSED_BYTES", "CHUNK_TOKENS", "CHUNK_OVERLAP_TOKENS")


class ChildFailed(Exception):
    """The child failed in a way that says nothing about the file (a bug, a crash): the message
    names what happened; the traceback, if any, is in the child's log (stderr)."""


@dataclass(frozen=True)
class Extracted:
    title: str
    pages: int | None
    drafts: list[ChunkDraft]
    extract_seconds: float  # wall seconds in the child, per stage
    chunk_seconds: float


def extract_and_chunk(data: bytes, mime: str, name: str) -> Extracted:
    """The title, page count and chunks of a file's bytes (pure: no database, any process)."""
    start = time.perf_counter()
    sections = extract_sections(data, mime)
    extracted = time.perf_counter()
    drafts = chunk_sections(
        sections,
        max_tokens=settings.CHUNK_TOKENS,
        overlap_tokens=settings.CHUNK_OVERLAP_TOKENS,
        # Chunking counts the same paragraphs and sentences several times: count each once.
        count_tokens=lru_cache(maxsize=None)(embedding.count_tokens),
    )
    pages = max((s.page or 0 for s in sections), default=0) or None
    title = title_for(Path(name), sections)
    return Extracted(title, pages, drafts, extracted - start, time.perf_counter() - extracted)


def extract_in_child(data: bytes, mime: str, name: str) -> Extracted:
    """``extract_and_chunk`` in a child process, within EXTRACT_TIMEOUT_SECONDS of CPU time (and
    WALL_CLOCK_FACTOR times that of wall time) and EXTRACT_MEMORY_MB of memory; a file that breaks a
    limit raises ``ExtractionError`` naming it."""
    task = ({name: getattr(settings, name) for name in CHILD_SETTINGS}, data, mime, name)
    limits = _Limits(settings.EXTRACT_TIMEOUT_SECONDS, settings.EXTRACT_MEMORY_MB * 1024 * 1024)
    child = _take_child()
    try:
        return child.run(task, limits)
    finally:
        _give_back(child)


@dataclass(frozen=True)
class _Limits:
    cpu_seconds: float
    memory_bytes: int

    def timed_out(self) -> ExtractionError:
        return ExtractionError(f"extraction took longer than {self.cpu_seconds:g} s (file too complex?)")

    def out_of_memory(self) -> ExtractionError:
        return ExtractionError(f"extraction ran out of memory (limit {self.memory_bytes // 1024**2} MB)")


class _Child:
    """One child process serving extraction tasks over a socket pair, one at a time.

    Started as ``python -c`` rather than by ``multiprocessing``: its ``spawn`` re-imports the
    parent's main module in the child, which fails for a script without a ``__main__`` guard."""

    def __init__(self) -> None:
        self.conn, child_end = multiprocessing.Pipe()
        with child_end:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, str(child_end.fileno())],
                cwd=_PROJECT_ROOT,
                pass_fds=[child_end.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),  # the child's stray prints go to our log, not the pipe
            )
        self.tasks = 0
        self.broken = False  # killed, or in an unknown state: never reused
        try:
            started = self.conn.poll(CHILD_START_TIMEOUT) and self.conn.recv() == "ready"
        except EOFError:
            started = False
        if not started:
            self.kill()
            raise ChildFailed("the extraction process did not start")

    def run(self, task: tuple, limits: _Limits) -> Extracted:
        self.tasks += 1
        self.broken = True  # until its reply is in: a child interrupted in a task is not reused
        self.conn.send((task, limits))
        if not self.conn.poll(limits.cpu_seconds * WALL_CLOCK_FACTOR):
            raise limits.timed_out()
        try:
            kind, value = self.conn.recv()
        except EOFError:
            raise self._death(limits) from None
        self.broken = kind == "memory"  # that child exits
        if kind == "memory":
            raise limits.out_of_memory()
        if kind == "error":
            raise value  # ExtractionError: a bad file; ChildFailed: ingestion's internal error
        return value

    def _death(self, limits: _Limits) -> Exception:
        code = self.process.wait(5)
        if code == -signal.SIGXCPU:
            return limits.timed_out()
        # Rust and C++ parsers abort when an allocation fails under RLIMIT_AS; SIGKILL is the
        # kernel's OOM killer.
        if code in (-signal.SIGABRT, -signal.SIGKILL):
            return limits.out_of_memory()
        return ChildFailed(f"the extraction process died (exit code {code})")

    def usable(self) -> bool:
        return not self.broken and self.tasks < CHILD_MAX_TASKS and self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)
        self.conn.close()


_idle: list[_Child] = []
_idle_lock = threading.Lock()


def _take_child() -> _Child:
    with _idle_lock:
        while _idle:
            child = _idle.pop()
            if child.usable():
                return child
            child.kill()
    return _Child()


def _give_back(child: _Child) -> None:
    if not child.usable():
        child.kill()
        return
    with _idle_lock:
        _idle.append(child)


# --- In the child --------------------------------------------------------------------------------
_CHILD_MAIN = "import sys; from documents.sandbox import serve; serve(int(sys.argv[1]))"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def serve(fd: int) -> None:
    """The child's entry point: serve the parent over the socket ``fd``."""
    _serve(Connection(fd))


def _serve(conn: Connection) -> None:
    """The child's loop: run each task received, send back ("ok", Extracted), ("error", exception)
    or ("memory", None); exit when the parent closes the pipe or after running out of memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then ends us
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a child killed by a limit leaves no core dump
    if not settings.configured:
        settings.configure()  # no project settings here: the parent sends the values per task
    embedding.count_tokens("warm up")  # the tokenizer loads before the first task's clock starts
    conn.send("ready")
    while True:
        try:
            (values, data, mime, name), limits = conn.recv()
        except EOFError:
            return
        for key, value in values.items():
            setattr(settings, key, value)
        _limit(limits)
        reply = _attempt(data, mime, name)
        del data
        try:
            conn.send(reply)
        except MemoryError:
            reply = ("memory", None)
            conn.send(reply)
        if reply[0] == "memory":
            return  # a process that ran out of memory may be in any state: the parent starts another


def _attempt(data: bytes, mime: str, name: str) -> tuple[str, Any]:
    try:
        return "ok", extract_and_chunk(data, mime, name)
    except MemoryError:
        return "memory", None
    except ExtractionError as exc:
        return "error", exc
    except Exception as exc:  # sent as text: an arbitrary exception may not survive pickling
        logger.exception("extraction of %s failed", name)
        return "error", ChildFailed(f"{type(exc).__name__}: {exc}")


def _limit(limits: _Limits) -> None:
    """Limits for the next task, on top of what this reused process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_used = usage.ru_utime + usage.ru_stime
    _set_soft_limit(resource.RLIMIT_CPU, int(cpu_used + limits.cpu_seconds) + 1)
    _set_soft_limit(resource.RLIMIT_AS, _address_space() + limits.memory_bytes)


def _set_soft_limit(which: int, soft: int) -> None:
    _, hard = resource.getrlimit(which)
    resource.setrlimit(which, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _address_space() -> int:
    """This process's virtual memory in bytes (the first field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
