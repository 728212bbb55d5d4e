"""``manage.py worker``: django-tasks-db's ``db_worker`` plus recovery of orphaned documents."""

from __future__ import annotations

import os
import socket

from django.conf import settings
from django_tasks_db.management.commands.db_worker import Command as DBWorkerCommand

from documents.recovery import RecoveryLoop, do_heartbeat, requeue_orphaned_documents


class Command(DBWorkerCommand):
    help = "Run background jobs (document ingestion); re-queues jobs whose worker died."

    def handle(self, *args, **options):
        worker_id = f"{socket.gethostname()}:{os.getpid()}"
        do_heartbeat(worker_id)
        requeue_orphaned_documents()
        recovery = RecoveryLoop(settings.INGEST_RECOVERY_INTERVAL, worker_id)
        recovery.start()
        try:
            return super().handle(*args, **options)
        finally:
            recovery.stopped.set()
