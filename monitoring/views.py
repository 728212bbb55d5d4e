"""Liveness and readiness probes."""

from __future__ import annotations

import logging

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from documents import embedding

logger = logging.getLogger(__name__)


@require_GET
def healthz(request):
    """The process is alive and serving requests (no dependency is checked)."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """Ready to serve chats: database reachable, pgvector installed, embedding model loadable."""
    checks = {"database": _check_database(), "pgvector": _check_pgvector(), "embedding_model": _check_model()}
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)


def _check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:
        logger.warning("readiness: database unreachable: %s", exc)
        return {"ok": False, "error": f"database unreachable ({type(exc).__name__})"}


def _check_pgvector() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
    except Exception as exc:
        return {"ok": False, "error": f"cannot check extensions ({type(exc).__name__})"}
    if row is None:
        return {"ok": False, "error": "the pgvector extension 'vector' is not installed in the database"}
    return {"ok": True, "version": row[0]}


def _check_model() -> dict:
    if embedding.is_loaded():
        return {"ok": True, "loaded": True}
    try:
        path = embedding.model_path()
    except RuntimeError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "loaded": False, "path": path}
