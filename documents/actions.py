"""State changes of documents: register a file, queue it, queue it again, refresh it from its
source. The processing itself is ``ingest.py``; the job that runs it is ``tasks.py``.

Identical content in the same collection is registered once (sha256). A changed source file keeps
the old chunks searchable until the new ones replace them in one transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection, transaction

from .extract import ExtractionError, mime_for
from .ingest import Progress, do_process_documents
from .models import Collection, Document
from .tasks import INGEST_CHANNEL, ingest_document


@dataclass(frozen=True)
class AddResult:
    document: Document
    created: bool  # False when identical content was already there (nothing new registered)


def do_add_document(
    collection: Collection, name: str, data: bytes, *, source_path: str = "", enqueue: bool = True
) -> AddResult:
    """Register a file in ``collection`` (stored, ``pending``) and, if ``enqueue``, queue its
    processing. Identical content is not registered twice; a failed copy of it is retried."""
    digest = hashlib.sha256(data).hexdigest()
    existing = Document.objects.filter(collection=collection, sha256=digest).first()
    if existing is not None:
        if existing.status == Document.Status.FAILED and existing.file:
            do_requeue(existing, enqueue=enqueue)
        return AddResult(existing, created=False)
    previous = Document.objects.filter(collection=collection, source_path=source_path).first() if source_path else None
    if previous is not None:
        do_replace_file(previous, name, data, enqueue=enqueue)
        return AddResult(previous, created=True)
    with transaction.atomic():
        document = Document.objects.create(
            collection=collection, title=name[:300], source_path=source_path, sha256=digest, size_bytes=len(data)
        )
        if len(data) > settings.MAX_UPLOAD_BYTES:
            document.mark_failed(f"the file is larger than the {settings.MAX_UPLOAD_BYTES // 1024**2} MB limit")
            return AddResult(document, created=True)
        document.file.save(Path(name).name or "upload", ContentFile(data), save=True)
        if enqueue:
            enqueue_processing(document)
    return AddResult(document, created=True)


def do_replace_file(document: Document, name: str, data: bytes, *, enqueue: bool = True) -> None:
    """The document's content changed: store the new file and process it again."""
    with transaction.atomic():
        document.sha256, document.size_bytes = hashlib.sha256(data).hexdigest(), len(data)
        document.file.save(Path(name).name, ContentFile(data), save=True)
        do_requeue(document, enqueue=enqueue)


def do_refresh_from_source(document: Document, *, enqueue: bool = True) -> bool:
    """If the file the document was ingested from changed on disk, replace it and queue it again;
    returns whether it had changed."""
    source = Path(document.source_path) if document.source_path else None
    if source is None or not source.is_file():
        return False
    data = source.read_bytes()
    if hashlib.sha256(data).hexdigest() == document.sha256:
        return False
    do_replace_file(document, source.name, data, enqueue=enqueue)
    return True


def do_requeue(document: Document, *, enqueue: bool = True) -> None:
    """Put a document back to ``pending`` (retry or reindex) and queue it."""
    with transaction.atomic():
        document.status, document.error, document.chunks_done = Document.Status.PENDING, "", 0
        document.save()
        if enqueue:
            enqueue_processing(document)


def enqueue_processing(document: Document) -> None:
    """Queue the durable job that processes ``document``; its id is kept for orphan recovery. A
    waiting worker is woken at once (``NOTIFY``, delivered when the transaction commits)."""
    document.task_id = str(ingest_document.enqueue(document.pk).id)
    Document.objects.filter(pk=document.pk).update(task_id=document.task_id)
    with connection.cursor() as cursor:
        cursor.execute(f"NOTIFY {INGEST_CHANNEL}")


def do_ingest_file(path: Path, collection: Collection, progress: Progress | None = None) -> AddResult:
    """Register and process one file now (commands, demo set-up); failures are recorded on the
    document, not raised."""
    return do_ingest_files([path], collection, progress)[0]


def do_ingest_files(paths: list[Path], collection: Collection, progress: Progress | None = None) -> list[AddResult]:
    """Register ``paths`` and process them now, as one stream (``ingest.do_process_documents``);
    one result per path, in order."""
    results = [
        do_add_document(collection, path.name, path.read_bytes(), source_path=str(path.resolve()), enqueue=False)
        for path in paths
    ]
    do_process_documents([r.document.pk for r in results if r.document.is_active], progress)
    for result in results:
        result.document.refresh_from_db()
    return results


def find_files(paths: list[Path]) -> list[Path]:
    """Files named in ``paths``, plus files of a supported type under the folders among them."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.is_file() and _is_supported(p))
        else:
            found.append(path)  # named explicitly: an unsupported type fails with its reason
    return found


def _is_supported(path: Path) -> bool:
    try:
        mime_for(path)
    except ExtractionError:
        return False
    return True
