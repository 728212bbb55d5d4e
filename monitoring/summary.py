"""The monitoring summary (one dict for the dashboard, the JSON API and ``manage.py monitor``) and
the alerts derived from it."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from chat.breakers import breakers
from chat.llm import get_provider
from chat.ratelimit import question_limiter
from chat.slots import generation_slots, user_generations
from documents.models import Document
from documents.recovery import live_workers

from . import live, metrics

_alert_since: dict[str, float] = {}


async def build_summary(lag_since: float | None = None) -> dict:
    """Everything the dashboard shows, from this process and the database; with ``lag_since`` (a
    Unix time), also the worst event-loop lag since then (a benchmark's window, say)."""
    live.sampler().ensure_running()
    slots = generation_slots()
    provider = get_provider()
    summary: dict[str, Any] = {
        "generated_at": time.time(),
        "pool": {**live.pool_stats(), **await sync_to_async(_postgres_connections)()},
        "breakers": await breakers().describe(),
        "streams": {
            "websocket_connections": metrics.websocket_connections(),
            "active_generations": slots.active,
            "queued": slots.queued,
            "detached": metrics.detached_answers(),
            "capacity": slots.capacity,
        },
        "jobs": await sync_to_async(job_counts)(),
        "loop_lag_ms": {
            "last": round(live.sampler().lag * 1000, 1),
            "max": round(live.sampler().max_lag * 1000, 1),
            "last_minute_max": round(live.sampler().max_lag_since(time.time() - 60) * 1000, 1),
            **({"max_since": round(live.sampler().max_lag_since(lag_since) * 1000, 1)} if lag_since else {}),
        },
        "latency": metrics.latency_summary(),
        "tokens_per_second": _tokens_per_second(),
        "errors_by_code": metrics.errors_by_code(),
        "grounding": metrics.grounding_summary(),
        "llm": {"provider": provider.name, "model": provider.model},
        "redis": _redis_state(),
        "series": list(live.sampler().samples),
    }
    for breaker in summary["breakers"]:
        metrics.BREAKER_OPEN.labels(breaker["name"]).set(0 if breaker["state"] == "closed" else 1)
    summary["alerts"] = evaluate_alerts(summary)
    return summary


async def refresh_gauges() -> None:
    """Bring the scraped gauges up to date (pool, slots, breakers) right before an export."""
    live.sampler().ensure_running()
    live.sampler().snapshot(record=False)
    for breaker in await breakers().describe():
        metrics.BREAKER_OPEN.labels(breaker["name"]).set(0 if breaker["state"] == "closed" else 1)


def _postgres_connections() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            return {"postgres_connections": cursor.fetchone()[0]}
    except Exception as exc:
        return {"postgres_connections": None, "postgres_error": type(exc).__name__}
    finally:
        connection.close()


def job_counts() -> dict:
    hour_ago = timezone.now() - timedelta(hours=1)
    try:
        tasks = DBTaskResult.objects
        return {
            "queued": tasks.filter(status="READY").count(),
            "running": tasks.filter(status="RUNNING").count(),
            "failed_last_hour": Document.objects.filter(
                status=Document.Status.FAILED, updated_at__gte=hour_ago
            ).count(),
            "workers_alive": live_workers(),
            "documents_in_progress": Document.objects.in_progress().count(),
        }
    finally:
        connection.close()


def _tokens_per_second() -> float:
    """Deltas streamed per second over the last minute of samples."""
    samples = list(live.sampler().samples)[-7:]
    if len(samples) < 2:
        return 0.0
    return round(
        (samples[-1]["tokens"] - samples[0]["tokens"]) / (samples[-1]["t"] - samples[0]["t"]),
        2,
    )


def _redis_state() -> dict:
    if not settings.REDIS_URL:
        return {"configured": False}
    fallback = any(store.fallback.active for store in (question_limiter(), breakers(), user_generations()))
    return {"configured": True, "fallback_to_local": fallback}


def evaluate_alerts(summary: dict) -> list[dict]:
    """Alerts whose condition holds now, each with the time it started holding."""
    firing = {}
    pool = summary["pool"]
    if pool.get("enabled") and pool["in_use"] > settings.ALERT_POOL_USE * pool["max"]:
        firing["pool_near_max"] = f"DB pool {pool['in_use']}/{pool['max']} connections in use"
    if pool.get("waiting"):
        firing["pool_waiting"] = f"{pool['waiting']} request(s) waiting for a DB connection"
    for breaker in summary["breakers"]:
        if breaker["state"] != "closed":
            firing[f"breaker_{breaker['name']}"] = f"circuit breaker '{breaker['name']}' is {breaker['state']}"
    if summary["streams"]["queued"] > settings.ALERT_QUEUE_DEPTH:
        firing["queue_growing"] = f"{summary['streams']['queued']} answers waiting for a generation slot"
    if summary["loop_lag_ms"]["last"] > settings.ALERT_LOOP_LAG_MS:
        firing["loop_lag"] = f"event loop lag {summary['loop_lag_ms']['last']} ms"
    if summary["jobs"]["queued"] and not summary["jobs"]["workers_alive"]:
        firing["no_worker"] = (
            f"{summary['jobs']['queued']} ingestion job(s) queued and no worker alive (manage.py worker)"
        )
    if summary["jobs"]["failed_last_hour"]:
        firing["ingestion_failures"] = f"{summary['jobs']['failed_last_hour']} document(s) failed in the last hour"
    if summary["redis"].get("fallback_to_local"):
        firing["redis_unreachable"] = "Redis unreachable: limits and breakers use local memory"
    if pool.get("postgres_error"):
        firing["database_unreachable"] = f"database unreachable ({pool['postgres_error']})"
    return _with_since(firing)


def _with_since(firing: dict[str, str]) -> list[dict]:
    now = time.time()
    for key in list(_alert_since):
        if key not in firing:
            del _alert_since[key]
    return [
        {"key": key, "message": message, "since": _alert_since.setdefault(key, now)} for key, message in firing.items()
    ]
