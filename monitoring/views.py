"""Health probes, the staff dashboard and its JSON API."""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.db import connection
from django.http import HttpResponseForbidden, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_prometheus.exports import ExportToDjangoView
from django_tasks_db.models import DBTaskResult

from chat.breakers import NAMES, breakers
from common import redis
from documents import embedding
from documents.recovery import live_workers

from .summary import build_summary, refresh_gauges

logger = logging.getLogger(__name__)


# --- probes -------------------------------------------------------------------------------------
@require_GET
def healthz(request):
    """The process is alive and serving requests (no dependency is checked)."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """Ready to serve chats: database reachable, pgvector installed, embedding model loadable,
    Redis answering (when configured)."""
    checks = {
        "database": _check_database(),
        "pgvector": _check_pgvector(),
        "embedding_model": _check_model(),
        "worker": _check_worker(),
    }
    if settings.REDIS_URL:
        checks["redis"] = _check_redis()
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


def _check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:
        logger.warning("readiness: database unreachable: %s", type(exc).__name__)
        return {"ok": False, "error": f"database unreachable ({type(exc).__name__})"}


def _check_pgvector() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
    except Exception as exc:
        return {"ok": False, "error": f"cannot check extensions ({type(exc).__name__})"}
    if row is None:
        return {
            "ok": False,
            "error": "the pgvector extension 'vector' is not installed in the database",
        }
    return {"ok": True, "version": row[0]}


def _check_model() -> dict:
    if embedding.is_loaded():
        # The engine that runs, which is torch if the configured ONNX engine could not load.
        return {"ok": True, "loaded": True, "engine": embedding.engine_id()}
    try:
        path = embedding.model_path()
    except RuntimeError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "loaded": False, "path": path}


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


# --- staff-only dashboard and API ------------------------------------------------------------------
def staff_only(view):
    """Async views for staff; others get 403 (API) or the admin login (pages)."""

    @functools.wraps(view)
    async def wrapper(request, *args, **kwargs):
        user = await request.auser()
        if user.is_active and user.is_staff:
            return await view(request, *args, **kwargs)
        if request.path.startswith("/monitoring/api/"):
            return JsonResponse({"error": "staff only"}, status=403)
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))

    return wrapper


@staff_only
async def dashboard(request):
    summary = await build_summary()
    return await sync_to_async(render)(
        request,
        "monitoring/dashboard.html",
        {"summary": summary, "title": "Monitoring"},
    )


SECTIONS = {"summary", "pool", "breakers", "streams", "jobs", "alerts"}


@staff_only
async def api(request, section: str = "summary"):
    if section not in SECTIONS:
        return JsonResponse({"error": f"unknown section {section!r}"}, status=404)
    try:
        lag_since = float(request.GET["lag_since"]) if "lag_since" in request.GET else None
    except ValueError:
        return JsonResponse({"error": "lag_since must be a Unix time in seconds"}, status=400)
    summary = await build_summary(lag_since)
    return JsonResponse(summary if section == "summary" else {section: summary[section]})


@require_POST
@staff_only
async def reset_breaker(request, name: str):
    if name not in NAMES:
        return JsonResponse({"error": f"unknown breaker {name!r}"}, status=404)
    await breakers().reset(name)
    logger.warning("circuit breaker %s reset by %s", name, (await request.auser()).username)
    return JsonResponse({"reset": name, "breakers": await breakers().describe()})


async def metrics_view(request):
    """Prometheus exposition: public if METRICS_PUBLIC, else staff, a scraper with the token, or
    (no token configured) a scraper on loopback."""
    if not (settings.METRICS_PUBLIC or await _is_operator(request) or _is_local_scraper(request)):
        return HttpResponseForbidden("metrics are for staff or a scraper with the metrics token")
    await refresh_gauges()
    return await sync_to_async(ExportToDjangoView)(request)


async def _is_operator(request) -> bool:
    """Staff, or a scraper presenting ``Authorization: Bearer <METRICS_TOKEN>``."""
    if _has_metrics_token(request):
        return True
    user = await request.auser()
    return user.is_active and user.is_staff


def _has_metrics_token(request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = settings.METRICS_TOKEN
    # Constant-time: the comparison must not tell a guesser how much of the token was right.
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), expected.encode())


# A proxy on the same host makes every request come from loopback; these headers say one did.
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def _is_local_scraper(request) -> bool:
    """Loopback, with no token configured and no sign of a proxy in between."""
    if settings.METRICS_TOKEN or any(name in request.headers for name in FORWARDING_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False
