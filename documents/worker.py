"""The ingestion worker: django-tasks-db's worker loop, changed where ingestion needs it.

- An ingestion job starts a stream (``ingest.do_process_documents``) that claims further queued
  documents as it runs short, as many as start extracting at once (each claim locked with ``SKIP
  LOCKED`` as django-tasks-db does, so two workers never take the same job): a long upload flows
  through without a pause, and chunks of several documents share engine calls. Other jobs run one
  by one as usual. The stream's jobs are marked done when it ends.
- Between jobs it waits on Postgres ``LISTEN`` (``actions.enqueue_processing`` sends ``NOTIFY``), so
  a new upload starts within milliseconds, not after a poll interval; it looks anyway every
  ``interval`` seconds in case a notification was missed.
"""

from __future__ import annotations

import logging
import threading

import psycopg
from django.db import close_old_connections, connection
from django_tasks_db.management.commands.db_worker import Worker
from django_tasks_db.models import DBTaskResult
from django_tasks_db.utils import exclusive_transaction

from .ingest import do_process_documents
from .tasks import INGEST_CHANNEL, ingest_document

logger = logging.getLogger(__name__)


class Listener:
    """A connection of its own that LISTENs on the ingestion channel (a pooled connection would
    lose the subscription when it goes back to the pool)."""

    def __init__(self) -> None:
        self._conn: psycopg.Connection | None = None

    def listen(self) -> None:
        """Subscribe now: a document queued from here on wakes the next ``wait``."""
        try:
            self._connected()
        except psycopg.Error:
            logger.warning("cannot LISTEN for queued documents; polling instead", exc_info=True)

    def wait(self, timeout: float) -> None:
        """Return when a document is queued, or after ``timeout`` seconds at most."""
        try:
            conn = self._connected()
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                pass
            for _ in conn.notifies(timeout=0):  # several uploads at once: one wake-up is enough
                pass
        except psycopg.Error:
            logger.warning("lost the LISTEN connection; polling until it is back", exc_info=True)
            self.close()
            threading.Event().wait(timeout)  # the poll interval itself, not a stand-in for work

    def _connected(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(**connection.get_connection_params(), autocommit=True)
            self._conn.execute(f"LISTEN {INGEST_CHANNEL}")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class IngestWorker(Worker):
    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.listener = Listener()

    def run(self) -> None:
        logger.info("ingestion worker %s started", self.worker_id)
        self.listener.listen()  # before the first look at the queue, so no upload falls between
        try:
            while self.running:
                close_old_connections()
                claimed = self.claim(1)
                if claimed:
                    self.run_job(claimed[0])
                elif self.batch:
                    return  # --batch: run what is queued, then exit
                if self.max_tasks is not None and self._run_tasks >= self.max_tasks:
                    return
                if self.running and not claimed:
                    self.listener.wait(self.interval)
        finally:
            self.listener.close()

    def _ready(self):
        return DBTaskResult.objects.ready().filter(backend_name=self.backend_name, queue_name__in=self.queue_names)

    def claim(self, limit: int, ready=None) -> list[DBTaskResult]:
        """Up to ``limit`` jobs of ``ready`` (default: all ready jobs), marked as run by this worker."""
        claimed: list[DBTaskResult] = []
        ready = self._ready() if ready is None else ready
        while len(claimed) < limit:
            with exclusive_transaction(ready.db):
                job = ready.get_locked()
                if job is None:
                    break
                job.claim(self.worker_id)
            claimed.append(job)
        return claimed

    def run_job(self, job: DBTaskResult) -> None:
        """An ingestion job starts a stream; any other job runs as django-tasks-db runs it."""
        if job.task_path == ingest_document.module_path:
            self.run_stream([job])
        else:
            self.run_task(job)

    def run_stream(self, ingestion: list[DBTaskResult]) -> None:
        def more(limit: int) -> list[int]:
            # Documents queued while the stream runs join it (no pause between batches).
            if not self.running or (self.max_tasks is not None and self._run_tasks + len(ingestion) >= self.max_tasks):
                return []  # shutting down, or done: let the stream drain
            claimed = self.claim(limit, self._ready().filter(task_path=ingest_document.module_path))
            ingestion.extend(claimed)
            return [job.task_result.args[0] for job in claimed]

        self.running_task = True
        try:
            stats = do_process_documents([job.task_result.args[0] for job in ingestion], more=more)
            logger.info("ingested %s document(s), %s chunks: %s", stats.documents, stats.chunks, stats)
            for job in ingestion:
                job.set_successful(None)
        except BaseException as exc:
            for job in ingestion:
                job.set_failed(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.running_task = False
            self._run_tasks += len(ingestion)
