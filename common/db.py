"""Database calls from async code, run on a bounded pool of threads sized like the DB pool.

Channels' ``database_sync_to_async`` defaults to ``thread_sensitive=True``: every ORM call of the
process then queues on one thread. Measured at 200 concurrent chats, that one thread was the
bottleneck (acks took 2-4 s while the connection pool sat idle). The chat's DB functions are
self-contained (each opens, commits and returns its connection), so they run here instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, wraps
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


@lru_cache(maxsize=1)
def executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.DB_POOL_MAX, thread_name_prefix="db")


def db_async(function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``function`` as a coroutine run on the DB threads; the connection goes back to the pool
    after every call, so no thread keeps one while idle."""
    return sync_to_async(_returning_connections(function), thread_sensitive=False, executor=executor())


def _returning_connections(function: Callable[P, R]) -> Callable[P, R]:
    @wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        finally:
            for connection in connections.all(initialized_only=True):
                connection.close()

    return run
