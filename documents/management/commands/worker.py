"""``manage.py worker``: the ingestion worker (``documents/worker.py``) plus recovery of orphaned
documents."""

from __future__ import annotations

import os
import socket

from django.conf import settings
from django_tasks_db.management.commands.db_worker import Command as DBWorkerCommand

from documents import embedding
from documents.recovery import RecoveryLoop, do_heartbeat, requeue_orphaned_documents
from documents.worker import IngestWorker


class Command(DBWorkerCommand):
    help = (
        "Run background jobs (document ingestion, several documents per pipeline, woken by each upload); "
        "re-queues jobs whose worker died."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.set_defaults(interval=settings.INGEST_POLL_INTERVAL)

    def handle(self, *args, verbosity, queue_name, interval, batch, backend_name, startup_delay, max_tasks, **options):
        self.configure_logging(verbosity)
        if not batch:
            # Ingestion must not slow the chats of a web process on the same box: it gets every
            # core, at a lower priority, so it uses what the web process leaves.
            os.nice(settings.INGEST_WORKER_NICE)
        embedding.use_threads(settings.INGEST_ENGINE_THREADS)
        embedding.get_engine()  # loaded (and exported, the first time) before the first upload waits on it
        worker_id = f"{socket.gethostname()}:{os.getpid()}"
        do_heartbeat(worker_id)
        requeue_orphaned_documents()
        recovery = RecoveryLoop(settings.INGEST_RECOVERY_INTERVAL, worker_id)
        recovery.start()
        worker = IngestWorker(
            queue_names=queue_name.split(","),
            interval=interval,
            batch=batch,
            backend_name=backend_name,
            startup_delay=startup_delay,
            max_tasks=max_tasks,
            worker_id=worker_id[:64],
            excluded_queue_names=[],
        )
        try:
            worker.configure_signals()
            worker.run()
        finally:
            recovery.stopped.set()
