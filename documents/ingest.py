"""Ingestion pipeline: file → sections → chunks → embeddings → rows, one document at a time.

A document is registered first (file stored, row ``pending``), then processed, either at once or
by a background worker. Identical content in the same collection is registered once (sha256).
Chunks of a document are replaced in one transaction, so a crash never leaves half a document
searchable and a re-run after a crash never duplicates chunks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.postgres.search import SearchVector
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from . import embedding
from .chunking import ChunkDraft, chunk_sections
from .extract import ExtractionError, extract_sections, mime_for, title_for
from .models import Chunk, Collection, Document

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class IngestResult:
    document: Document
    created: bool  # False when identical content was already there (nothing new registered)


def do_add_document(
    collection: Collection,
    name: str,
    data: bytes,
    *,
    source_path: str = "",
    enqueue: bool = True,
) -> IngestResult:
    """Register a file in ``collection`` (stored, ``pending``) and, if ``enqueue``, queue its
    processing. Identical content is not registered twice; a failed copy of it is retried."""
    digest = hashlib.sha256(data).hexdigest()
    existing = Document.objects.filter(collection=collection, sha256=digest).first()
    if existing is not None:
        if existing.status == Document.Status.FAILED and existing.file:
            do_requeue(existing, enqueue=enqueue)
        return IngestResult(existing, created=False)
    previous = Document.objects.filter(collection=collection, source_path=source_path).first() if source_path else None
    if previous is not None:
        _replace_file(previous, name, data, digest, enqueue=enqueue)
        return IngestResult(previous, created=True)
    with transaction.atomic():
        document = Document.objects.create(
            collection=collection,
            title=name[:300],
            source_path=source_path,
            sha256=digest,
            size_bytes=len(data),
        )
        if len(data) > settings.MAX_UPLOAD_BYTES:
            _mark_failed(
                document,
                f"the file is larger than the {_mb(settings.MAX_UPLOAD_BYTES)} MB limit",
            )
            return IngestResult(document, created=True)
        document.file.save(Path(name).name or "upload", ContentFile(data), save=True)
        if enqueue:
            _enqueue(document)
    return IngestResult(document, created=True)


def _replace_file(document: Document, name: str, data: bytes, digest: str, *, enqueue: bool) -> None:
    """The source file changed: store the new content and process it again. The old chunks stay
    searchable until the new ones replace them in one transaction."""
    with transaction.atomic():
        document.sha256, document.size_bytes = digest, len(data)
        document.file.save(Path(name).name, ContentFile(data), save=True)
        do_requeue(document, enqueue=enqueue)


def do_requeue(document: Document, *, enqueue: bool = True) -> None:
    """Put a document back to ``pending`` (retry or reindex) and queue it."""
    with transaction.atomic():
        document.status, document.error, document.chunks_done = (
            Document.Status.PENDING,
            "",
            0,
        )
        document.save()
        if enqueue:
            _enqueue(document)


def _enqueue(document: Document) -> None:
    from .tasks import ingest_document

    document.task_id = str(ingest_document.enqueue(document.pk).id)
    Document.objects.filter(pk=document.pk).update(task_id=document.task_id)


def do_ingest_file(path: Path, collection: Collection, progress: Progress | None = None) -> IngestResult:
    """Register and process one file now (commands, demo set-up); failures are recorded on the
    document, not raised."""
    result = do_add_document(
        collection,
        path.name,
        path.read_bytes(),
        source_path=str(path.resolve()),
        enqueue=False,
    )
    if result.document.is_active:
        do_process_document(result.document.pk, progress)
        result.document.refresh_from_db()
    return result


def do_process_document(document_id: int, progress: Progress | None = None) -> None:
    """Extract, chunk, embed and store one registered document; safe to run again after a crash."""
    document = Document.objects.get(pk=document_id)
    if not document.is_active:
        return
    try:
        _run_pipeline(document, progress)
    except ExtractionError as exc:
        _mark_failed(document, str(exc))
    except Exception as exc:
        logger.exception("ingestion of document %s failed", document_id)
        _mark_failed(document, f"internal error while ingesting ({type(exc).__name__})")


def _run_pipeline(document: Document, progress: Progress | None) -> None:
    _set_status(document, Document.Status.EXTRACTING)
    document.mime = mime_for(Path(document.file.name or document.title))
    sections = extract_sections(_read(document), document.mime)
    document.title = title_for(Path(document.title), sections)
    document.pages = max((s.page or 0 for s in sections), default=0) or None
    drafts = chunk_sections(
        sections,
        max_tokens=settings.CHUNK_TOKENS,
        overlap_tokens=settings.CHUNK_OVERLAP_TOKENS,
        count_tokens=embedding.count_tokens,
    )
    if not drafts:
        raise ExtractionError("the file contains no text")
    document.chunks_total, document.chunks_done = len(drafts), 0
    _set_status(document, Document.Status.EMBEDDING)
    vectors = _embed_in_batches(document, drafts, progress)
    _replace_chunks(document, drafts, vectors)


def _read(document: Document) -> bytes:
    try:
        with document.file.open("rb") as handle:
            return handle.read()
    except (FileNotFoundError, ValueError):
        raise ExtractionError("the stored file is missing; upload it again") from None


def _embed_in_batches(document: Document, drafts: list[ChunkDraft], progress: Progress | None) -> list[list[float]]:
    vectors: list[list[float]] = []
    batch = settings.EMBEDDING_BATCH_SIZE
    for start in range(0, len(drafts), batch):
        vectors.extend(embedding.encode([d.text for d in drafts[start : start + batch]]))
        # Progress doubles as the heartbeat that tells a live worker this job is not orphaned.
        Document.objects.filter(pk=document.pk).update(chunks_done=len(vectors), updated_at=timezone.now())
        if progress:
            progress(len(vectors), len(drafts))
    return vectors


@transaction.atomic
def _replace_chunks(document: Document, drafts: list[ChunkDraft], vectors: list[list[float]]) -> None:
    Chunk.objects.filter(document=document).delete()
    Chunk.objects.bulk_create(
        Chunk(
            document=document,
            ordinal=i,
            text=draft.text,
            section=draft.section[:300],
            page=draft.page,
            token_count=draft.token_count,
            embedding=vector,
        )
        for i, (draft, vector) in enumerate(zip(drafts, vectors))
    )
    Chunk.objects.filter(document=document).update(search_vector=SearchVector("text", config="english"))
    document.status, document.error, document.chunks_done = (
        Document.Status.READY,
        "",
        len(drafts),
    )
    document.save()


def _set_status(document: Document, status: str) -> None:
    document.status = status
    document.save()


def _mark_failed(document: Document, reason: str) -> None:
    document.status, document.error = Document.Status.FAILED, reason
    document.save()


def _mb(size: int) -> int:
    return size // (1024 * 1024)


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
