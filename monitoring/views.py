"""Health probes, the staff dashboard and its JSON API."""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponseForbidden, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_prometheus.exports import ExportToDjangoView

from chat.breakers import NAMES, breakers

from .readiness import readiness
from .summary import build_summary, refresh_gauges

logger = logging.getLogger(__name__)


# --- probes -------------------------------------------------------------------------------------
@require_GET
def healthz(request):
    """The process is alive and serving requests (no dependency is checked)."""
    return JsonResponse({"status": "ok"})


@require_GET
async def readyz(request):
    """Ready to serve chats: database reachable, pgvector installed, embedding model loadable,
    ingestion not stalled, Redis answering (when configured). Anyone gets the status; staff and
    holders of METRICS_TOKEN also get each check."""
    result = await readiness()
    body: dict = {"status": "ready" if result.ready else "not ready"}
    if await _is_operator(request):
        body |= {"checks": result.checks, "checked_at": result.checked_at}
    return JsonResponse(body, status=200 if result.ready else 503)


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
