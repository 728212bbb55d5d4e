"""Background ingestion: admin upload → durable task → worker; a killed worker loses nothing."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django_tasks_db.models import DBTaskResult

from documents.actions import do_add_document
from documents.chunking import chunk_sections
from documents.embedding import count_tokens
from documents.extract import markdown_sections
from documents.models import Chunk, Collection, Document
from tests.conftest import make_staff, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def library(db):
    return Collection.objects.create(name="library", owner=make_staff("admin"))


def test_it_ingests_a_multi_file_admin_upload_in_the_worker(library, client, tmp_path):
    client.force_login(library.owner)
    files = {
        "a.md": b"# Alpha\n\nAlpha comes first.",
        "b.txt": b"Beta comes second in the alphabet.",
    }
    uploads = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        uploads.append((tmp_path / name).open("rb"))
    response = client.post(
        "/admin/documents/document/upload/",
        {"collection": library.pk, "files": uploads},
    )
    assert response.status_code == 302, response.content[:2000]
    assert set(Document.objects.values_list("status", flat=True)) == {"pending"}
    assert DBTaskResult.objects.filter(status="READY").count() == 2

    call_command("worker", "--batch", "--no-startup-delay", "--interval", "0")

    documents = Document.objects.order_by("title")
    assert [(d.title, d.status, d.chunks_done, d.chunks_total) for d in documents] == [
        ("Alpha", "ready", 1, 1),
        ("b", "ready", 1, 1),
    ]
    assert DBTaskResult.objects.filter(status="SUCCESSFUL").count() == 2
    listing = client.get("/admin/documents/document/")
    assert b"<progress" in listing.content and b"Upload documents" in listing.content


def test_it_uploads_the_same_content_only_once(library, client):
    client.force_login(library.owner)
    for _ in range(2):
        response = client.post(
            "/admin/documents/document/upload/",
            {
                "collection": library.pk,
                "files": [_upload("same.txt", b"identical content here")],
            },
        )
        assert response.status_code == 302
    assert Document.objects.count() == 1 and DBTaskResult.objects.count() == 1


def test_it_keeps_the_worker_going_after_a_bad_file(library):
    bad = do_add_document(library, "broken.txt", b"\x00\x01\x02" * 100).document
    good = do_add_document(library, "good.txt", b"A perfectly good document about tea.").document
    call_command("worker", "--batch", "--no-startup-delay", "--interval", "0")
    bad.refresh_from_db(), good.refresh_from_db()
    assert bad.status == "failed" and bad.error == "the file looks binary, not text"
    assert good.status == "ready"


def big_markdown(sections: int) -> str:
    parts = []
    for s in range(sections):
        parts.append(f"## Section {s}\n")
        parts.extend(
            f"Fact {s}.{p}: the component number {s * 10 + p} handles request routing, retries and logging "
            f"for subsystem {s}, and its configuration lives in file {s}-{p}.toml next to the service."
            for p in range(6)
        )
    return "# Operations manual\n\n" + "\n\n".join(parts)


def start_worker(**env) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "worker",
            "--no-startup-delay",
            "--interval",
            "0.1",
        ],
        cwd=ROOT,
        env=subprocess_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling the database for the worker's progress


@pytest.mark.slow
def test_it_finishes_a_document_without_duplicates_after_its_worker_is_killed(library):
    text = big_markdown(60)
    expected = len(
        chunk_sections(
            markdown_sections(text),
            max_tokens=200,
            overlap_tokens=40,
            count_tokens=count_tokens,
        )
    )
    document = do_add_document(library, "manual.md", text.encode()).document
    first_task = document.task_id

    doomed = start_worker(EMBEDDING_BATCH_SIZE=4, INGEST_ENCODE_CHUNKS=4)
    try:
        wait_until(
            lambda: Document.objects.get(pk=document.pk).chunks_done > 0,
            120,
            "embedding to start",
        )
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
    finally:
        doomed.kill()
    killed_at = Document.objects.get(pk=document.pk)
    assert killed_at.status == "embedding" and 0 < killed_at.chunks_done < expected

    rescuer = start_worker(INGEST_STALE_SECONDS=1, INGEST_RECOVERY_INTERVAL=0.2)
    try:
        wait_until(
            lambda: Document.objects.get(pk=document.pk).status == "ready",
            180,
            "the document to be ready",
        )
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.wait(30)

    document.refresh_from_db()
    ordinals = list(Chunk.objects.filter(document=document).values_list("ordinal", flat=True))
    assert len(ordinals) == expected == document.chunks_total == document.chunks_done
    assert sorted(ordinals) == list(range(expected))
    assert DBTaskResult.objects.get(pk=first_task).status == "FAILED"
    assert DBTaskResult.objects.get(pk=document.task_id).status == "SUCCESSFUL"


def _upload(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data)


def test_readiness_reports_queued_jobs_without_a_live_worker(library, client, settings):
    settings.READYZ_CACHE_SECONDS = 0  # asked again at once, after the worker ran
    settings.METRICS_TOKEN = "scraper-token"
    operator = {"Authorization": "Bearer scraper-token"}  # anonymous callers get the status only
    do_add_document(library, "waiting.txt", b"Nobody is running the worker yet.")
    stalled = client.get("/readyz", headers=operator)
    assert stalled.status_code == 503
    assert stalled.json()["checks"]["worker"]["error"] == "1 ingestion job(s) queued and no worker alive"
    call_command("worker", "--batch", "--no-startup-delay", "--interval", "0")  # writes its heartbeat
    ready = client.get("/readyz", headers=operator).json()["checks"]["worker"]
    assert ready == {"ok": True, "alive": 1, "queued": 0}


def start_worker_at(interval: float, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "worker", "--no-startup-delay", "--interval", str(interval)],
        cwd=ROOT,
        env=subprocess_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)


def test_it_starts_a_queued_document_at_once_not_at_the_next_poll(library):
    worker = start_worker_at(60)  # only a notification can wake it within the minute
    try:
        wait_until(lambda: _live_worker_count() == 1, 60, "the worker to start")
        queued_at = time.monotonic()
        document = do_add_document(library, "note.md", b"# Note\n\nThe boiler is serviced every October.").document
        wait_until(lambda: Document.objects.get(pk=document.pk).status == "ready", 30, "the document to be ready")
        assert time.monotonic() - queued_at < 30  # well before the 60 s poll
    finally:
        stop(worker)


def test_it_processes_each_document_once_with_two_workers_on_one_queue(library):
    workers = [start_worker_at(0.2, INGEST_ENCODE_CHUNKS=8) for _ in range(2)]
    try:
        wait_until(lambda: _live_worker_count() == 2, 60, "both workers to start")
        documents = [
            do_add_document(library, f"doc{i}.md", f"# Doc {i}\n\n{big_markdown(2)} Number {i}.".encode()).document
            for i in range(12)
        ]
        ids = [d.pk for d in documents]
        wait_until(lambda: Document.objects.filter(pk__in=ids, status="ready").count() == 12, 120, "all documents")
    finally:
        for worker in workers:
            stop(worker)
    jobs = DBTaskResult.objects.filter(pk__in=[d.task_id for d in Document.objects.filter(pk__in=ids)])
    assert sorted(len(job.worker_ids) for job in jobs) == [1] * 12  # each job claimed exactly once
    assert all(job.status == "SUCCESSFUL" for job in jobs)
    for document in Document.objects.filter(pk__in=ids):
        ordinals = list(Chunk.objects.filter(document=document).values_list("ordinal", flat=True))
        assert sorted(ordinals) == list(range(document.chunks_total))


def _live_worker_count() -> int:
    from documents.recovery import live_workers

    return live_workers()
