"""What /readyz reports: database, pgvector, embedding model, ingestion worker, Redis.

Probes ask often, from load balancers and orchestrators, and anyone may ask: the checks run off the
event loop on the DB threads (``common/db.py``), three queries at most, and their result is reused
for ``READYZ_CACHE_SECONDS``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django_tasks_db.models import DBTaskResult

from common import redis
from common.db import db_async
from documents import embedding
from documents.recovery import live_workers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, dict]
    checked_at: float  # time.time() of the checks


class _Last:
    """The last result of this process, and when (monotonic) it was taken."""

    readiness: Readiness | None = None
    at = 0.0


async def readiness() -> Readiness:
    """The current readiness, at most ``READYZ_CACHE_SECONDS`` old. Two probes arriving together
    on a cold cache may both check: that costs one more round of queries, and needs no lock that
    would tie the cache to one event loop."""
    last = _Last.readiness
    if last is not None and time.monotonic() - _Last.at < settings.READYZ_CACHE_SECONDS:
        return last
    fresh = await db_async(check_readiness)()
    _Last.readiness, _Last.at = fresh, time.monotonic()
    return fresh


def forget() -> None:
    """Drop the last result (tests start from what their own database holds)."""
    _Last.readiness = None


def check_readiness() -> Readiness:
    database, pgvector = _check_database()
    checks = {"database": database, "pgvector": pgvector, "embedding_model": _check_model()}
    checks["worker"] = _check_worker() if database["ok"] else {"ok": False, "error": "database unreachable"}
    if settings.REDIS_URL:
        checks["redis"] = _check_redis()
    return Readiness(all(check["ok"] for check in checks.values()), checks, time.time())


def _check_database() -> tuple[dict, dict]:
    """One query answers both: the database is reachable, and has pgvector."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
    except Exception as exc:
        logger.warning("readiness: database unreachable: %s", type(exc).__name__)
        error = f"database unreachable ({type(exc).__name__})"
        return {"ok": False, "error": error}, {"ok": False, "error": error}
    if row is None:
        return {"ok": True}, {"ok": False, "error": "the pgvector extension 'vector' is not installed in the database"}
    return {"ok": True}, {"ok": True, "version": row[0]}


def _check_model() -> dict:
    if embedding.is_loaded():
        # The engine that runs, which is torch if the configured ONNX engine could not load.
        return {"ok": True, "loaded": True, "engine": embedding.engine_id()}
    try:
        embedding.model_path()
    except RuntimeError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "loaded": False}


def _check_worker() -> dict:
    """Ingestion is stalled if jobs wait and no worker has written a heartbeat recently."""
    try:
        alive = live_workers()
        queued = DBTaskResult.objects.filter(status="READY").count()
    except Exception as exc:
        return {"ok": False, "error": f"cannot check workers ({type(exc).__name__})"}
    if queued and not alive:
        return {"ok": False, "error": f"{queued} ingestion job(s) queued and no worker alive", "alive": 0}
    return {"ok": True, "alive": alive, "queued": queued}


def _check_redis() -> dict:
    try:
        redis.ping()
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": f"redis unreachable ({type(exc).__name__})"}
