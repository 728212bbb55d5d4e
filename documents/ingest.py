"""Ingestion pipeline: file → sections → chunks → embeddings → rows, one document at a time.

A document was registered first (``actions.py``: file stored, row ``pending``); this processes it,
at once or in a background worker (``tasks.py``). Chunks of a document are replaced in one
transaction, so a crash never leaves half a document searchable and a re-run after a crash never
duplicates chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.contrib.postgres.search import SearchVector
from django.db import transaction
from django.utils import timezone

from . import embedding
from .chunking import ChunkDraft, chunk_sections
from .extract import ExtractionError, extract_sections, mime_for, title_for
from .models import Chunk, Document

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


def do_process_document(document_id: int, progress: Progress | None = None) -> None:
    """Extract, chunk, embed and store one registered document; safe to run again after a crash."""
    document = Document.objects.get(pk=document_id)
    if not document.is_active:
        return
    try:
        _run_pipeline(document, progress)
    except ExtractionError as exc:
        document.mark_failed(str(exc))
    except Exception as exc:
        logger.exception("ingestion of document %s failed", document_id)
        document.mark_failed(f"internal error while ingesting ({type(exc).__name__})")


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
