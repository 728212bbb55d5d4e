"""Ingestion pipeline: file → sections → chunks → embeddings → rows, one document at a time.

Re-ingesting identical content into the same collection is a no-op (sha256). Chunks of a
document are replaced in one transaction, so a crash never leaves half a document searchable.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.postgres.search import SearchVector
from django.db import transaction

from . import embedding
from .chunking import ChunkDraft, chunk_sections
from .extract import ExtractionError, extract_sections, mime_for, title_for
from .models import Chunk, Collection, Document

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class IngestResult:
    document: Document
    created: bool  # False when identical content was already ingested (nothing done)


def do_ingest_file(path: Path, collection: Collection, progress: Progress | None = None) -> IngestResult:
    """Ingest one file into ``collection``; failures are recorded on the document, not raised."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    existing = Document.objects.filter(collection=collection, sha256=digest).first()
    if existing is not None and existing.status == Document.Status.READY:
        return IngestResult(existing, created=False)
    document = existing or Document.objects.create(
        collection=collection, title=path.name, source_path=str(path), sha256=digest, size_bytes=len(data)
    )
    try:
        _run_pipeline(document, path, data, progress)
    except ExtractionError as exc:
        _mark_failed(document, str(exc))
    except Exception as exc:
        logger.exception("ingestion of %s failed", path)
        _mark_failed(document, f"internal error while ingesting ({type(exc).__name__})")
    return IngestResult(document, created=True)


def _run_pipeline(document: Document, path: Path, data: bytes, progress: Progress | None) -> None:
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise ExtractionError(f"the file is larger than the {settings.MAX_UPLOAD_BYTES // (1024 * 1024)} MB limit")
    _set_status(document, Document.Status.EXTRACTING)
    document.mime = mime_for(path)
    sections = extract_sections(data, document.mime)
    document.title = title_for(path, sections)
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


def _embed_in_batches(document: Document, drafts: list[ChunkDraft], progress: Progress | None) -> list[list[float]]:
    vectors: list[list[float]] = []
    batch = settings.EMBEDDING_BATCH_SIZE
    for start in range(0, len(drafts), batch):
        vectors.extend(embedding.encode([d.text for d in drafts[start : start + batch]]))
        Document.objects.filter(pk=document.pk).update(chunks_done=len(vectors))
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
    document.status, document.error, document.chunks_done = Document.Status.READY, "", len(drafts)
    document.save()


def _set_status(document: Document, status: str) -> None:
    document.status = status
    document.save()


def _mark_failed(document: Document, reason: str) -> None:
    document.status, document.error = Document.Status.FAILED, reason
    document.save()


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
