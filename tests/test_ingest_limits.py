"""Ingestion within limits, one pipeline per document.

A file that parsing cannot finish within its CPU time or memory fails with the limit it broke and
the worker goes on with the next; a long extraction keeps its document's heartbeat; a document one
pipeline works on is neither taken by another nor re-queued as abandoned; two replacements of a
document's chunks run one after the other."""

import threading
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from documents.actions import do_add_document
from documents.chunking import ChunkDraft
from documents.ingest import do_process_documents, do_replace_chunks
from documents.models import Chunk, Collection, Document
from documents.recovery import requeue_orphaned_documents
from tests.conftest import make_staff

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def library(db, settings, tmp_path) -> Collection:
    settings.MEDIA_ROOT = tmp_path / "media"
    return Collection.objects.create(name="library", owner=make_staff("admin"))


def unpunctuated(words: int) -> bytes:
    """Text with no full stop and no blank line: chunking must split it word by word."""
    return " ".join(f"token{i}" for i in range(words)).encode()


def add(collection: Collection, name: str, data: bytes, enqueue: bool = True) -> Document:
    return do_add_document(collection, name, data, enqueue=enqueue).document


def run_worker() -> None:
    call_command("worker", "--batch", "--no-startup-delay", "--interval", "0")


def test_it_fails_a_file_that_takes_too_long_and_goes_on_with_the_next(library, settings):
    settings.EXTRACT_TIMEOUT_SECONDS = 1
    hostile = add(library, "wall.txt", unpunctuated(300_000))  # ~4 MB: 20 s and more of chunking
    good = add(library, "tea.txt", b"A perfectly good document about tea.")
    started = time.monotonic()
    run_worker()
    hostile.refresh_from_db(), good.refresh_from_db()
    assert hostile.status == "failed"
    assert hostile.error == "extraction took longer than 1 s (file too complex?)"
    assert good.status == "ready" and good.error == ""
    assert time.monotonic() - started < 60


def test_it_fails_a_file_that_needs_too_much_memory_and_goes_on_with_the_next(library, settings):
    settings.EXTRACT_MEMORY_MB = 64
    hostile = add(library, "wall.txt", unpunctuated(3_000_000))  # ~40 MB of words
    good = add(library, "tea.txt", b"A perfectly good document about tea.")
    run_worker()
    hostile.refresh_from_db(), good.refresh_from_db()
    assert hostile.status == "failed"
    assert hostile.error == "extraction ran out of memory (limit 64 MB)"
    assert good.status == "ready"


def test_it_keeps_the_heartbeat_of_a_document_during_a_long_extraction(library, settings):
    settings.INGEST_STALE_SECONDS = 0.4  # a heartbeat every 0.1 s
    document = add(library, "long.txt", unpunctuated(30_000))  # seconds of chunking, within limits
    worker, _ = _start_thread(do_process_documents, [document.pk])
    beats = set()
    while worker.is_alive():
        status, updated_at = Document.objects.filter(pk=document.pk).values_list("status", "updated_at").get()
        if status == "extracting":
            beats.add(updated_at)
        time.sleep(0.05)  # polling the database while the pipeline works
    worker.join()
    assert Document.objects.get(pk=document.pk).status == "ready"
    assert len(beats) >= 5


def test_it_leaves_a_document_another_pipeline_holds_alone(library, settings):
    settings.INGEST_ENCODE_CHUNKS = 4
    document = add(library, "long.txt", unpunctuated(6_000), enqueue=False)  # several engine calls
    seen: dict = {}

    def meanwhile(held, done, total):
        if not seen and done < total:  # the first pipeline is halfway through the document
            seen["second"] = _in_thread(do_process_documents, [document.pk])
            # Even with a heartbeat that looks stale, a document held by a live pipeline is not abandoned.
            Document.objects.filter(pk=document.pk).update(updated_at=timezone.now() - timedelta(hours=1))
            seen["requeued"] = _in_thread(requeue_orphaned_documents, 60)
            seen["at"] = Document.objects.values_list("status", "chunks_done").get(pk=document.pk)

    first = do_process_documents([document.pk], meanwhile)
    assert seen["second"].documents == 0 and seen["requeued"] == []
    assert seen["at"][0] == "embedding"  # untouched by the second pipeline
    document.refresh_from_db()
    assert first.documents == 1 and document.status == "ready"
    ordinals = sorted(Chunk.objects.filter(document=document).values_list("ordinal", flat=True))
    assert ordinals == list(range(document.chunks_total))


def test_it_replaces_the_chunks_of_a_document_one_replacement_after_the_other(library):
    document = add(library, "tea.txt", b"A perfectly good document about tea.")
    drafts = [ChunkDraft(f"Tea fact number {i}.", "", None, 5) for i in range(6)]
    vectors = [[1.0] + [0.0] * 383 for _ in drafts]
    replaced, committed, outcome = threading.Event(), threading.Event(), {}

    def first():
        with transaction.atomic():
            do_replace_chunks(document, drafts, vectors)
            replaced.set()
            committed.wait(30)  # commits once the second replacement waits on this one
        connection.close()

    def second():
        try:
            outcome["stored"] = do_replace_chunks(Document.objects.get(pk=document.pk), drafts, vectors)
        except Exception as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert replaced.wait(30)
    threads[1].start()
    _wait_for(lambda: _backends_waiting_on_a_lock() == 1)  # the two replacements overlap
    committed.set()
    for thread in threads:
        thread.join(30)
    assert outcome == {"stored": True}
    document.refresh_from_db()
    assert document.status == "ready" and document.error == ""
    assert sorted(Chunk.objects.filter(document=document).values_list("ordinal", flat=True)) == list(range(6))


def _start_thread(function, *args) -> tuple[threading.Thread, dict]:
    """``function(*args)`` started on a thread of its own, with its own database connection (as
    another worker would); the outcome dict gets its "result" or "error"."""
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def _in_thread(function, *args):
    """``function(*args)`` on a thread of its own; its result, or its exception raised here."""
    thread, outcome = _start_thread(function, *args)
    thread.join(120)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _backends_waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def _wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)  # polling the database for the other thread's progress
