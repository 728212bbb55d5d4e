"""Ingestion pipeline: files → sections → chunks → embeddings → rows.

Documents were registered first (``actions.py``: file stored, row ``pending``); this processes
them, at once or in the background worker (``worker.py``). Several documents go through as one
stream: a thread extracts and chunks the next document while the engine embeds the chunks at hand,
and chunks of different documents share engine calls (a one-page document does not get a call of
its own). Chunks of a document are replaced in one transaction, so a crash never leaves half a
document searchable and a re-run after a crash never duplicates chunks.

Parsing runs in a child process within time and memory limits (``sandbox.py``); each document is
claimed for the pipeline while it works on it (``claims.py``), and its heartbeat (``updated_at``)
is written while it waits on extraction or on the engine, so a long document is not taken for
abandoned.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.contrib.postgres.search import SearchVector
from django.db import transaction
from django.db.models import TextField, Value
from django.utils import timezone

from . import embedding
from .chunking import ChunkDraft
from .claims import Claims
from .extract import ExtractionError, mime_for
from .models import Chunk, Document
from .progress import notify_progress
from .sandbox import Extracted, extract_in_child

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
    claims = Claims()
    try:
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-extract") as extractor,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-encode") as encoder,
        ):
            _Pipeline(document_ids, extractor, encoder, claims, stats, progress, more).run()
    finally:
        claims.close()
    return stats


class _Pipeline:
    def __init__(
        self,
        document_ids: list[int],
        extractor: Executor,
        encoder: Executor,
        claims: Claims,
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
        self.claims = claims

    def run(self) -> None:
        while self.todo or self.extracting or self.waiting:
            self._collect(block=not self.waiting)
            batch = _next_batch(self.waiting)
            if batch:
                encoding = self.encoder.submit(self._encode, [embedded_text(item.drafts[i]) for item, i in batch])
                self._write_embedded()  # the previous call's results, while the engine runs this one
                self._wait(encoding)
                self._receive(batch, encoding)
        self._write_embedded()

    def _submit(self) -> None:
        """Keep PREFETCH_DOCUMENTS documents extracting ahead of the engine."""
        if not self.todo and self.more and len(self.extracting) < PREFETCH_DOCUMENTS:
            self.todo.extend(self.more(PREFETCH_DOCUMENTS - len(self.extracting)))
        while self.todo and len(self.extracting) < PREFETCH_DOCUMENTS:
            document_id = self.todo.popleft()
            started = _guarded(document_id, partial(self._start, document_id))
            if started is None:
                self.claims.release(document_id)
            else:
                self.extracting.append(started)

    def _start(self, document_id: int) -> tuple[Document, Future] | None:
        if not self.claims.take(document_id):
            logger.info("document %s is being processed by another worker; left to it", document_id)
            return None
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
            self._wait(extraction)
            self.extracting.popleft()
            prepared = _guarded(document.pk, partial(_prepared, document, extraction))
            if prepared is None:
                self.claims.release(document.pk)
            else:
                self.waiting.append(prepared)
                block = False
            self._submit()

    def _wait(self, future: Future) -> None:
        """Until ``future`` is done, write the heartbeat of every document held here: a long
        extraction or engine call must not make them look abandoned to another worker's recovery."""
        while not wait([future], timeout=settings.INGEST_STALE_SECONDS / 4).done:
            self._touch([item.document.pk for item in self.waiting] + [d.pk for d, _ in self.extracting])

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
                _mark_failed(item.document.pk, f"internal error while ingesting ({type(exc).__name__})")
                self.claims.release(item.document.pk)
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
        self._touch(idle + [document.pk for document, _ in self.extracting])
        for item in self.embedded:
            document = item.document
            if len(item.vectors) < len(item.drafts):
                # Progress doubles as the heartbeat that tells a live worker this job is not orphaned.
                Document.objects.filter(pk=document.pk).update(chunks_done=len(item.vectors), updated_at=timezone.now())
                notify_progress(document.pk)
            else:
                self._store(item)
            if self.progress:
                self.progress(document, len(item.vectors), len(item.drafts))
        self.embedded = []

    def _store(self, item: _Prepared) -> None:
        document = item.document
        with self.stats.timing("store"):
            stored = _guarded(document.pk, partial(do_replace_chunks, document, item.drafts, item.vectors))
        if stored is False:
            # Its file was replaced while this ran: these chunks are of the old file. Still claimed
            # here, it goes round again (the job of the replacement may have found it claimed).
            self.todo.append(document.pk)
            return
        self.claims.release(document.pk)
        if stored:
            self.stats.documents, self.stats.chunks = self.stats.documents + 1, self.stats.chunks + len(item.drafts)

    def _touch(self, document_ids: list[int]) -> None:
        if document_ids:
            Document.objects.filter(pk__in=document_ids).update(updated_at=timezone.now())


def _extract(data: bytes, mime: str, name: str, stats: StageSeconds) -> Extracted:
    """Title, pages and chunks of a file's bytes, parsed in the sandbox (on the extraction thread: no
    database here)."""
    extracted = extract_in_child(data, mime, name)
    stats.extract += extracted.extract_seconds
    stats.chunk += extracted.chunk_seconds
    return extracted


def _prepared(document: Document, extraction: Future[Extracted]) -> _Prepared:
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
        _mark_failed(document_id, str(exc))
    except Exception as exc:
        logger.exception("ingestion of document %s failed", document_id)
        _mark_failed(document_id, f"internal error while ingesting ({type(exc).__name__})")
    return None


def _mark_failed(document_id: int, reason: str) -> None:
    document = Document.objects.filter(pk=document_id).first()
    if document is not None:  # not deleted meanwhile
        document.mark_failed(reason)
        notify_progress(document_id)


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
def do_replace_chunks(document: Document, drafts: list[ChunkDraft], vectors: list[list[float]]) -> bool:
    """Store ``document``'s chunks in place of its old ones, and mark it ready; False (nothing
    stored) when its file was replaced since it was read."""
    # The row lock makes two replacements of one document's chunks run one after the other: run
    # together, each deletes only the chunks it sees and the second insert collides with the first
    # on (document, ordinal), which failed the document with the good chunks hidden.
    current = Document.objects.select_for_update().filter(pk=document.pk).values_list("sha256", flat=True).first()
    if current is None:
        raise Document.DoesNotExist
    if current != document.sha256:
        return False
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
    notify_progress(document.pk)
    return True


@transaction.atomic
def _set_status(document: Document, status: str) -> None:
    """Save ``document`` (the pipeline's copy) with ``status``; ``DoesNotExist`` when it was deleted
    meanwhile: ``save()`` would insert a deleted document again, whose file is gone."""
    if not Document.objects.select_for_update().filter(pk=document.pk).exists():
        raise Document.DoesNotExist
    document.status = status
    document.save()
    notify_progress(document.pk)
