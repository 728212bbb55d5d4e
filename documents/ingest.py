"""Ingestion pipeline: files → sections → chunks → embeddings → rows.

Documents were registered first (``actions.py``: file stored, row ``pending``); this processes
them, at once or in the background worker (``worker.py``). Several documents go through as one
stream: a thread extracts and chunks the next document while the engine embeds the chunks at hand,
and chunks of different documents share engine calls (a one-page document does not get a call of
its own). Chunks of a document are replaced in one transaction, so a crash never leaves half a
document searchable and a re-run after a crash never duplicates chunks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.contrib.postgres.search import SearchVector
from django.db import transaction
from django.db.models import TextField, Value
from django.utils import timezone

from . import embedding
from .chunking import ChunkDraft, chunk_sections
from .extract import ExtractionError, extract_sections, mime_for, title_for
from .models import Chunk, Document

logger = logging.getLogger(__name__)
Progress = Callable[[Document, int, int], None]  # (document, chunks embedded, chunks in it)
T = TypeVar("T")
PREFETCH_DOCUMENTS = 2  # extracted documents waiting for the engine: enough to never starve it


@dataclass
class StageSeconds:
    """Where the time of a pipeline run went (wall seconds per stage; extraction overlaps the rest)."""

    extract: float = 0.0
    chunk: float = 0.0
    embed: float = 0.0
    store: float = 0.0
    documents: int = 0
    chunks: int = 0

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, stage, getattr(self, stage) + time.perf_counter() - start)


@dataclass(eq=False)  # one document's work in flight: found and removed by identity, not by value
class _Prepared:
    document: Document
    drafts: list[ChunkDraft]
    vectors: list[list[float]] = field(default_factory=list)


def do_process_document(document_id: int, progress: Progress | None = None) -> StageSeconds:
    """Extract, chunk, embed and store one registered document; safe to run again after a crash."""
    return do_process_documents([document_id], progress)


def do_process_documents(
    document_ids: list[int], progress: Progress | None = None, more: Callable[[int], list[int]] | None = None
) -> StageSeconds:
    """Process registered documents as one stream (see the module's docstring); a document that
    fails is marked failed with its reason, the others go on.

    ``more(n)``, when given, is asked for up to ``n`` further document ids whenever the stream runs
    short (the worker claims queued jobs there, only as many as start extracting at once, so none
    sits claimed and idle): documents queued meanwhile join the stream instead of waiting for it to
    end. Every database access happens on the calling thread; the extraction thread only parses
    bytes, the encoding thread only runs the engine (while the calling thread stores what the
    previous call finished)."""
    stats = StageSeconds()
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-extract") as extractor,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-encode") as encoder,
    ):
        _Pipeline(document_ids, extractor, encoder, stats, progress, more).run()
    return stats


class _Pipeline:
    def __init__(
        self,
        document_ids: list[int],
        extractor: Executor,
        encoder: Executor,
        stats: StageSeconds,
        progress: Progress | None,
        more: Callable[[int], list[int]] | None,
    ) -> None:
        self.todo = deque(document_ids)
        self.more = more
        self.extracting: deque[tuple[Document, Future]] = deque()
        self.waiting: list[_Prepared] = []  # extracted, not fully embedded, in arrival order
        self.embedded: list[_Prepared] = []  # touched by the last engine call: progress or store to write
        self.extractor, self.encoder, self.stats, self.progress = extractor, encoder, stats, progress

    def run(self) -> None:
        while self.todo or self.extracting or self.waiting:
            self._collect(block=not self.waiting)
            batch = _next_batch(self.waiting)
            if batch:
                encoding = self.encoder.submit(self._encode, [embedded_text(item.drafts[i]) for item, i in batch])
                self._write_embedded()  # the previous call's results, while the engine runs this one
                self._receive(batch, encoding)
        self._write_embedded()

    def _submit(self) -> None:
        """Keep PREFETCH_DOCUMENTS documents extracting ahead of the engine."""
        if not self.todo and self.more and len(self.extracting) < PREFETCH_DOCUMENTS:
            self.todo.extend(self.more(PREFETCH_DOCUMENTS - len(self.extracting)))
        while self.todo and len(self.extracting) < PREFETCH_DOCUMENTS:
            document_id = self.todo.popleft()
            started = _guarded(document_id, partial(self._start, document_id))
            if started is not None:
                self.extracting.append(started)

    def _start(self, document_id: int) -> tuple[Document, Future] | None:
        document = Document.objects.get(pk=document_id)
        if not document.is_active:
            return None
        _set_status(document, Document.Status.EXTRACTING)
        document.mime = mime_for(Path(document.file.name or document.title))
        return document, self.extractor.submit(_extract, _read(document), document.mime, document.title, self.stats)

    def _collect(self, block: bool) -> None:
        """Move extracted documents to ``waiting`` until a full engine call's worth of chunks waits
        (blocking for the first only when ``block``)."""
        self._submit()
        while self.extracting and _unembedded(self.waiting) < settings.INGEST_ENCODE_CHUNKS:
            document, extraction = self.extracting[0]
            if not block and not extraction.done():
                return
            self.extracting.popleft()
            prepared = _guarded(document.pk, partial(_prepared, document, extraction))
            if prepared is not None:
                self.waiting.append(prepared)
                block = False
            self._submit()

    def _encode(self, texts: list[str]) -> list[list[float]]:
        with self.stats.timing("embed"):
            return embedding.encode(texts)

    def _receive(self, batch: list[tuple[_Prepared, int]], encoding: Future) -> None:
        touched = list({id(item): item for item, _ in batch}.values())
        try:
            vectors = encoding.result()
        except Exception as exc:
            logger.exception("embedding failed")
            for item in touched:
                self.waiting.remove(item)
                item.document.mark_failed(f"internal error while ingesting ({type(exc).__name__})")
            return
        for (item, _), vector in zip(batch, vectors):
            item.vectors.append(vector)
        for item in touched:
            if len(item.vectors) == len(item.drafts):
                self.waiting.remove(item)
        self.embedded = touched

    def _write_embedded(self) -> None:
        # Documents waiting behind others' chunks (extracted or not yet taken in) get a heartbeat
        # too: a long document ahead must not make them look abandoned to another worker's recovery.
        idle = [item.document.pk for item in self.waiting if item not in self.embedded]
        idle += [document.pk for document, _ in self.extracting]
        if idle:
            Document.objects.filter(pk__in=idle).update(updated_at=timezone.now())
        for item in self.embedded:
            document = item.document
            if len(item.vectors) < len(item.drafts):
                # Progress doubles as the heartbeat that tells a live worker this job is not orphaned.
                Document.objects.filter(pk=document.pk).update(chunks_done=len(item.vectors), updated_at=timezone.now())
            else:
                with self.stats.timing("store"):
                    _guarded(document.pk, partial(_replace_chunks, document, item.drafts, item.vectors))
                self.stats.documents, self.stats.chunks = self.stats.documents + 1, self.stats.chunks + len(item.drafts)
            if self.progress:
                self.progress(document, len(item.vectors), len(item.drafts))
        self.embedded = []


@dataclass(frozen=True)
class _Extracted:
    title: str
    pages: int | None
    drafts: list[ChunkDraft]


def _extract(data: bytes, mime: str, name: str, stats: StageSeconds) -> _Extracted:
    """Sections and chunks of a file's bytes (on the extraction thread: no database here)."""
    with stats.timing("extract"):
        sections = extract_sections(data, mime)
    with stats.timing("chunk"):
        drafts = chunk_sections(
            sections,
            max_tokens=settings.CHUNK_TOKENS,
            overlap_tokens=settings.CHUNK_OVERLAP_TOKENS,
            # Chunking counts the same paragraphs and sentences several times: count each once.
            count_tokens=lru_cache(maxsize=None)(embedding.count_tokens),
        )
    pages = max((s.page or 0 for s in sections), default=0) or None
    return _Extracted(title_for(Path(name), sections), pages, drafts)


def _prepared(document: Document, extraction: Future[_Extracted]) -> _Prepared:
    extracted = extraction.result()
    if not extracted.drafts:
        raise ExtractionError("the file contains no text")
    document.title = extracted.title
    document.pages = extracted.pages
    document.chunks_total, document.chunks_done = len(extracted.drafts), 0
    _set_status(document, Document.Status.EMBEDDING)
    return _Prepared(document, extracted.drafts)


def _unembedded(waiting: list[_Prepared]) -> int:
    return sum(len(item.drafts) - len(item.vectors) for item in waiting)


def _guarded(document_id: int, step: Callable[[], T]) -> T | None:
    """``step()``, a step of the document ``document_id``; a failure marks the document failed
    (with a reason the uploader is shown) instead of stopping the other documents."""
    try:
        return step()
    except Document.DoesNotExist:
        return None  # deleted meanwhile
    except ExtractionError as exc:
        Document.objects.get(pk=document_id).mark_failed(str(exc))
    except Exception as exc:
        logger.exception("ingestion of document %s failed", document_id)
        Document.objects.get(pk=document_id).mark_failed(f"internal error while ingesting ({type(exc).__name__})")
    return None


def _read(document: Document) -> bytes:
    try:
        with document.file.open("rb") as handle:
            return handle.read()
    except (FileNotFoundError, ValueError):
        raise ExtractionError("the stored file is missing; upload it again") from None


def _next_batch(waiting: list[_Prepared]) -> list[tuple[_Prepared, int]]:
    batch: list[tuple[_Prepared, int]] = []
    for item in waiting:
        start = len(item.vectors)
        take = min(len(item.drafts) - start, settings.INGEST_ENCODE_CHUNKS - len(batch))
        batch.extend((item, i) for i in range(start, start + take))
        if len(batch) == settings.INGEST_ENCODE_CHUNKS:
            break
    return batch


def embedded_text(draft: ChunkDraft) -> str:
    """What is embedded and indexed for full text: the chunk, after its section's heading path
    when CHUNK_WITH_SECTION (measured: bench/RESULTS.md, "Issue 13"); the stored text stays the chunk."""
    if settings.CHUNK_WITH_SECTION and draft.section:
        return f"{draft.section}\n\n{draft.text}"
    return draft.text


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
            # Computed by the INSERT itself: a later UPDATE would write every row twice, and add each
            # vector to the HNSW index twice.
            search_vector=SearchVector(Value(embedded_text(draft), output_field=TextField()), config="english"),
        )
        for i, (draft, vector) in enumerate(zip(drafts, vectors))
    )
    document.status, document.error, document.chunks_done = Document.Status.READY, "", len(drafts)
    document.embedded_with = embedding.engine_id()
    document.save()


def _set_status(document: Document, status: str) -> None:
    document.status = status
    document.save()
