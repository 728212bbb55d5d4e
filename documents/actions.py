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
from django.core.files.base import ContentFile, File
from django.db import connection, transaction

from .extract import ExtractionError, mime_for
from .files import delete_on_commit
from .ingest import Progress, do_process_documents
from .models import Collection, Document
from .tasks import INGEST_CHANNEL, ingest_document


@dataclass(frozen=True)
class AddResult:
    document: Document
    created: bool  # False when identical content was already there (nothing new registered)


def do_add_document(
    collection: Collection,
    name: str,
    content: File | bytes,
    *,
    source_path: str = "",
    enqueue: bool = True,
    sha256: str = "",
) -> AddResult:
    """Register a file in ``collection`` (stored, ``pending``) and, if ``enqueue``, queue its
    processing. Identical content is not registered twice; a failed copy of it is retried.

    ``content`` (an upload, an open file, or bytes) is hashed (unless its ``sha256`` is given) and
    stored in chunks, never held whole in memory."""
    content = ContentFile(content) if isinstance(content, bytes) else content
    digest = sha256 or file_sha256(content)
    existing = Document.objects.filter(collection=collection, sha256=digest).first()
    if existing is not None:
        if existing.status == Document.Status.FAILED and existing.file:
            do_requeue(existing, enqueue=enqueue)
        return AddResult(existing, created=False)
    previous = Document.objects.filter(collection=collection, source_path=source_path).first() if source_path else None
    if previous is not None:
        do_replace_file(previous, name, content, enqueue=enqueue)
        return AddResult(previous, created=True)
    with transaction.atomic():
        document = Document.objects.create(
            collection=collection, title=name[:300], source_path=source_path, sha256=digest, size_bytes=content.size
        )
        if reason := upload_too_large(content.size):
            document.mark_failed(reason)
            return AddResult(document, created=True)
        document.file.save(Path(name).name or "upload", content, save=True)
        if enqueue:
            enqueue_processing(document)
    return AddResult(document, created=True)


def do_replace_file(document: Document, name: str, content: File, *, enqueue: bool = True) -> None:
    """The document's content changed: store the new file (the old one is deleted once this commits)
    and process it again."""
    with transaction.atomic():
        delete_on_commit(document.file)
        document.sha256, document.size_bytes = file_sha256(content), content.size
        document.file.save(Path(name).name, content, save=True)
        do_requeue(document, enqueue=enqueue)


def upload_too_large(size: int) -> str:
    """Why a file of ``size`` bytes is refused, or "" when it is within MAX_UPLOAD_BYTES."""
    if size <= settings.MAX_UPLOAD_BYTES:
        return ""
    return f"the file is larger than the {settings.MAX_UPLOAD_BYTES / 1024**2:g} MB limit"


def file_sha256(content: File) -> str:
    """SHA-256 of ``content``, read chunk by chunk (an upload may be tens of megabytes)."""
    digest = hashlib.sha256()
    for chunk in content.chunks():
        digest.update(chunk)
    return digest.hexdigest()


def do_refresh_from_source(document: Document, *, enqueue: bool = True) -> bool:
    """If the file the document was ingested from changed on disk, replace it and queue it again;
    returns whether it had changed."""
    source = Path(document.source_path) if document.source_path else None
    if source is None or not source.is_file():
        return False
    with source.open("rb") as handle:
        content = File(handle, name=source.name)
        if file_sha256(content) == document.sha256:
            return False
        do_replace_file(document, source.name, content, enqueue=enqueue)
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
    results = [do_add_file(path, collection, enqueue=False) for path in paths]
    do_process_documents([r.document.pk for r in results if r.document.is_active], progress)
    for result in results:
        result.document.refresh_from_db()
    return results


def do_add_file(path: Path, collection: Collection, *, enqueue: bool = True) -> AddResult:
    """``do_add_document`` for a file on disk, streamed from it; its path is kept to refresh it from."""
    with path.open("rb") as handle:
        return do_add_document(collection, path.name, File(handle), source_path=str(path.resolve()), enqueue=enqueue)


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
