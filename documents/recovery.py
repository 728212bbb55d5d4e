"""Orphaned ingestion jobs: a document still in progress whose worker died is queued again.

django-tasks-db leaves the task of a killed worker ``RUNNING`` forever; the document's heartbeat
(``updated_at``, written while a pipeline works on it) tells a live worker it was abandoned, unless
a pipeline still holds its claim (``claims.py``): then it is slow, not abandoned.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone
from django_tasks.base import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from .actions import do_requeue
from .claims import is_claimed
from .models import Document, WorkerHeartbeat

logger = logging.getLogger(__name__)


def requeue_orphaned_documents(stale_after: float | None = None) -> list[int]:
    """Queue again every in-progress document with no heartbeat for ``stale_after`` seconds whose
    task is not simply waiting in the queue; returns their ids."""
    cutoff = timezone.now() - timedelta(seconds=stale_after or settings.INGEST_STALE_SECONDS)
    requeued = []
    for document in Document.objects.in_progress().filter(updated_at__lt=cutoff):
        if _requeue_if_orphaned(document.pk, cutoff):
            requeued.append(document.pk)
    return requeued


def _requeue_if_orphaned(document_id: int, cutoff) -> bool:
    with transaction.atomic():
        # Locked and re-checked, so two live workers never both re-queue the same document.
        document = Document.objects.select_for_update(skip_locked=True).filter(pk=document_id).first()
        if document is None or not document.is_active or document.updated_at >= cutoff:
            return False
        if is_claimed(document.pk):
            return False  # a live pipeline works on it (a dead worker's claims went with its connection)
        task = DBTaskResult.objects.filter(pk=document.task_id).first() if document.task_id else None
        if task is not None and task.status == TaskResultStatus.READY:
            return False  # still waiting for a free worker, not orphaned
        if task is not None and task.status == TaskResultStatus.RUNNING:
            DBTaskResult.objects.filter(pk=task.pk).update(status=TaskResultStatus.FAILED, finished_at=timezone.now())
        logger.warning("document %s was abandoned by its worker; queued again", document_id)
        do_requeue(document)
        return True


def do_heartbeat(worker_id: str) -> None:
    WorkerHeartbeat.objects.update_or_create(worker_id=worker_id, defaults={"seen_at": timezone.now()})


def live_workers() -> int:
    """Workers that wrote a heartbeat within three recovery intervals."""
    cutoff = timezone.now() - timedelta(seconds=3 * settings.INGEST_RECOVERY_INTERVAL)
    return WorkerHeartbeat.objects.filter(seen_at__gte=cutoff).count()


class RecoveryLoop(threading.Thread):
    """Beside a worker, every ``interval`` seconds: write its heartbeat, and re-queue documents
    abandoned by dead workers."""

    def __init__(self, interval: float, worker_id: str) -> None:
        super().__init__(daemon=True, name="ingest-recovery")
        self.interval = interval
        self.worker_id = worker_id
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                do_heartbeat(self.worker_id)
                requeue_orphaned_documents()
            except Exception:
                logger.exception("recovery of orphaned documents failed; will retry")
            finally:
                close_old_connections()
