"""Background jobs (Django tasks API, durable in Postgres through django-tasks-db)."""

from __future__ import annotations

from django_tasks import task

from .ingest import do_process_document

# Postgres channel on which queueing a document wakes the workers (LISTEN/NOTIFY).
INGEST_CHANNEL = "docchat_ingest"


@task()
def ingest_document(document_id: int) -> None:
    do_process_document(document_id)
