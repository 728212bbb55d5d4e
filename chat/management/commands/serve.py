"""``manage.py serve``: the production server (``make run``, Docker, the tests and the benchmarks).

uvicorn with uvloop, httptools and websockets: measured on this 2-core machine it spends less CPU
per chat than daphne (bench/RESULTS.md); daphne stays available through ``manage.py runserver``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

APP = "config.asgi:application"


class Command(BaseCommand):
    help = (
        "Serve DocChat with uvicorn: WEB_CONCURRENCY worker processes on one port, listen backlog "
        "LISTEN_BACKLOG, WebSocket messages capped at WS_MAX_MESSAGE_BYTES."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=None, help="default: WEB_CONCURRENCY")

    def handle(self, *args, host: str, port: int, workers: int | None, **options) -> None:
        workers = workers or settings.WEB_CONCURRENCY
        if workers > 1 and not settings.REDIS_URL:
            raise CommandError("several workers need REDIS_URL: each would keep its own rate limits and breakers")
        metrics_dir = share_metrics_between_workers() if workers > 1 else None
        try:
            self._run(host, port, workers)
        finally:
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)

    def _run(self, host: str, port: int, workers: int) -> None:
        uvicorn.run(APP, host=host, port=port, **uvicorn_options(workers))


def uvicorn_options(workers: int) -> dict[str, Any]:
    """How DocChat is served, apart from the address (also used by bench/relay.py, the floor)."""
    return dict(
        workers=workers,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.WS_MAX_MESSAGE_BYTES,
        # Answer frames are small and many: compressing each costs more CPU than it saves.
        ws_per_message_deflate=False,
        backlog=settings.LISTEN_BACKLOG,
        # Nothing starts with the server (every heavy resource is created lazily); at shutdown,
        # after the sockets close, the answers still running are saved as interrupted.
        lifespan="on",
        timeout_graceful_shutdown=10,
        # uvicorn believes X-Forwarded-For/-Proto from 127.0.0.1 unless told otherwise (and reads
        # its own FORWARDED_ALLOW_IPS variable): only the proxies configured in settings are believed.
        proxy_headers=bool(settings.FORWARDED_ALLOW_IPS),
        forwarded_allow_ips=list(settings.FORWARDED_ALLOW_IPS),
        log_level=logging.getLevelNamesMapping()[settings.LOG_LEVEL],
        access_log=False,
    )


def share_metrics_between_workers() -> Path:
    """Prometheus multiprocess mode: each worker writes its figures to files in a fresh folder of
    this server's, and /metrics (whichever worker answers) reports them all added up. The workers
    inherit the variable; prometheus_client reads it when they import it."""
    folder = Path(settings.METRICS_DIR) / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder
