"""A user's own documents, added from the chat page: upload → the real worker → progress on the
owner's chat socket → ready → answers cite it; quotas and refusals; delete; what a conversation
searches. One worker process serves the module (it loads the model once)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import pytest_asyncio
import websockets
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import close_old_connections, connection
from django.test import AsyncClient
from django_tasks_db.models import DBTaskResult

from common.db import db_async
from documents.actions import do_add_document
from documents.ingest import do_process_documents
from documents.models import Chunk, Collection, Document
from documents.personal import QuotaExceeded, do_add_personal_document, personal_collection
from documents.progress import CHANNEL, notify_progress
from tests.conftest import ARTIFACTS, ROOT, LiveServer, make_collection, make_user, session_cookie, subprocess_env

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def herons(colonies: int) -> str:
    """A Markdown document of about one chunk per colony."""
    return "# Herons of Lake Ashdown\n\n" + "\n\n".join(
        f"## Colony {n}\n\nThe grey herons of Lake Ashdown colony {n} build their nests in the alder trees "
        f"every February, and the warden counts {n * 7} nests from the boathouse. Ringed herons from colony "
        f"{n} winter near the estuary and return when the reeds turn green. The colony's chicks fledge in "
        f"late May, fed on roach and perch caught in the shallows beside the old mill."
        for n in range(1, colonies + 1)
    )


HERONS = herons(14)
WORKER_NAME = "docchat-test-worker"


@pytest.fixture(scope="module")
def worker_process(django_db_setup, django_db_blocker):
    """``manage.py worker`` on this run's database, four chunks per engine call (progress shows)."""
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "my-documents-worker.log").open("wb") as log:  # a pipe nobody reads would fill and block it
        process = subprocess.Popen(
            [sys.executable, "manage.py", "worker", "--no-startup-delay", "--interval", "0.2"],
            cwd=ROOT,
            env=subprocess_env(INGEST_ENCODE_CHUNKS=4, DB_APPLICATION_NAME=WORKER_NAME),
            stdout=log,
            stderr=log,
        )
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    with django_db_blocker.unblock():  # its sessions end a moment after it: the test database is dropped next
        deadline = time.monotonic() + 10
        while _sessions(WORKER_NAME) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling pg_stat_activity


@pytest.fixture
def worker(worker_process, transactional_db):
    """The module's worker, idle again when the test ends: the tables are emptied between tests,
    and a job whose row vanished under it stops the worker (every test that queues a job uses this)."""
    yield worker_process
    deadline = time.monotonic() + 60
    while DBTaskResult.objects.filter(status__in=["READY", "RUNNING"]).exists():
        assert worker_process.poll() is None, "the worker exited; see test-artifacts/my-documents-worker.log"
        assert time.monotonic() < deadline, "the worker did not finish its jobs"
        time.sleep(0.05)  # polling the job table


@pytest.fixture
def alice(transactional_db):
    return make_user("alice")


@pytest.fixture
def bob(transactional_db):
    return make_user("bob")


async def signed_in(user, **kwargs) -> AsyncClient:
    client = AsyncClient(**kwargs)
    await client.aforce_login(user)
    return client


async def upload(user, name: str, data: bytes):
    client = await signed_in(user)
    return await client.post("/api/documents/", {"file": SimpleUploadedFile(name, data)})


async def listening() -> None:
    """Until this process's progress listener has subscribed (it starts with the first socket)."""
    async with asyncio.timeout(20):
        while not await database_sync_to_async(_listener_pid)():
            await asyncio.sleep(0.05)  # polling pg_stat_activity for the LISTEN


def _sessions(application_name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name])
        return cursor.fetchone()[0]


def _listener_pid() -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
            [f"LISTEN {CHANNEL}"],
        )
        row = cursor.fetchone()
    return row[0] if row else None


async def document_frames(client, document_id: int, until: str, timeout: float = 120) -> list[dict]:
    """The ``document`` frames of ``document_id`` up to the first of status ``until``."""
    frames: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await client.receive(timeout)
            if frame["type"] == "document" and frame["document_id"] == document_id:
                frames.append(frame)
                if frame["status"] == until:
                    return frames
                assert frame["status"] != "failed", frame


orm = database_sync_to_async  # it closes the thread's connection after each call


@pytest_asyncio.fixture(autouse=True)
async def no_connection_left():
    """The test client and the async ORM leave a connection checked out on asgiref's thread; closed
    here, or the test database could not be dropped at the end."""
    yield
    await database_sync_to_async(close_old_connections)()


def stored_files() -> set[Path]:
    return {p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()}


async def test_it_ingests_an_upload_in_the_worker_with_progress_on_its_owners_socket_only(
    worker, alice, bob, chat_client
):
    library = await database_sync_to_async(Collection.objects.create)(name="bob-library", owner=bob)
    async with chat_client(alice) as alice_socket, chat_client(bob) as bob_socket:
        await listening()
        response = await upload(alice, "herons.md", HERONS.encode())
        assert response.status_code == 201, response.content
        added = response.json()["document"]
        assert added["status"] == "pending" and added["title"] == "herons.md"
        # bob's document in an ordinary collection is processed too, and announced to nobody
        await database_sync_to_async(do_add_document)(library, "notes.md", b"# Notes\n\nBob keeps bees.")

        frames = await document_frames(alice_socket, added["document_id"], until="ready")
        statuses = [f["status"] for f in frames]
        assert statuses[:2] == ["pending", "extracting"] and statuses[-1] == "ready", statuses
        progress = [(f["chunks_done"], f["chunks_total"]) for f in frames if f["status"] == "embedding"]
        total = frames[-1]["chunks_total"]
        assert total > 8 and frames[-1]["chunks_done"] == total
        assert len(progress) >= 3 and progress == sorted(progress), progress  # per engine call of 4 chunks
        assert frames[-1]["title"] == "Herons of Lake Ashdown" and frames[-1]["error"] == ""
        assert set(frames[-1]) == {"type", "document_id", "title", "status", "chunks_done", "chunks_total", "error"}

        finish, _ = await alice_socket.answer("When do the grey herons of Lake Ashdown build their nests?")
        assert finish["status"] == "complete", finish
        assert finish["sources"][0]["document_id"] == added["document_id"]
        assert finish["sources"][0]["title"] == "Herons of Lake Ashdown" and 'class="cite"' in finish["html"]

        # bob: no frame of alice's document (nor of his own ordinary one), no passage of it
        bob_finish, bob_frames = await bob_socket.answer("When do the grey herons of Lake Ashdown build their nests?")
        assert not [f for f in bob_frames if f["type"] == "document"]
        assert all(s["document_id"] != added["document_id"] for s in bob_finish["sources"])
        assert await bob_socket.communicator.receive_nothing(timeout=0.3)

    bobs = await signed_in(bob)
    overview = (await bobs.get("/api/documents/")).json()
    assert overview["documents"] == [] and "My documents (alice)" not in [c["name"] for c in overview["collections"]]
    assert (await bobs.get(f"/api/documents/{added['document_id']}/")).status_code == 404
    refused = await bobs.delete(f"/api/documents/{added['document_id']}/")
    assert refused.status_code == 404 and refused.json()["code"] == "not_found"
    assert await orm(Document.objects.filter(pk=added["document_id"]).exists)()

    mine = (await (await signed_in(alice)).get("/api/documents/")).json()
    assert [(d["document_id"], d["status"]) for d in mine["documents"]] == [(added["document_id"], "ready")]
    personal = [c for c in mine["collections"] if c["personal"]]
    assert [c["name"] for c in personal] == ["My documents (alice)"]
    assert mine["quota"]["files"] == 1 and mine["quota"]["bytes"] == len(HERONS.encode())


async def test_it_refuses_uploads_over_quota_too_large_or_unsupported_and_stores_nothing(worker, alice, bob, settings):
    settings.USER_DOCUMENTS_MAX_FILES, settings.USER_DOCUMENTS_MAX_BYTES = 2, 700
    settings.MAX_UPLOAD_BYTES = 600
    first = await upload(alice, "first.txt", b"The first note is about tea. " * 10)
    assert first.status_code == 201
    before = (await orm(Document.objects.count)(), stored_files())

    cases = [
        (("big.txt", b"x" * 601), 413, "file_too_large", "big.txt: the file is larger than the"),
        (("tool.exe", b"MZ..."), 415, "unsupported_type", "tool.exe: unsupported file type .exe; supported:"),
        (("empty.md", b""), 400, "invalid_upload", "empty.md: the file is empty."),
        (("second.txt", b"y" * 500), 400, "quota_exceeded", "would take your documents beyond"),
    ]
    for (name, data), status, code, message in cases:
        response = await upload(alice, name, data)
        assert response.status_code == status, (name, response.content)
        assert response.json()["code"] == code and message in response.json()["error"], response.json()
    assert (await orm(Document.objects.count)(), stored_files()) == before

    again = await upload(alice, "copy.txt", b"The first note is about tea. " * 10)  # identical content
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert (await upload(alice, "second.txt", b"Coffee.")).status_code == 201
    over = await upload(alice, "third.txt", b"Cocoa.")
    assert over.status_code == 400 and over.json()["code"] == "quota_exceeded"
    assert over.json()["error"] == "You have 2 documents, the most you can keep is 2; delete one to add another."
    assert await orm(Document.objects.count)() == 2

    client = await signed_in(alice)
    none = await client.post("/api/documents/", {})
    assert none.status_code == 400 and none.json()["code"] == "invalid_upload"
    two = await client.post(
        "/api/documents/", {"file": [SimpleUploadedFile("a.txt", b"a"), SimpleUploadedFile("b.txt", b"b")]}
    )
    assert two.status_code == 400
    strict = await signed_in(alice, enforce_csrf_checks=True)
    assert (await strict.post("/api/documents/", {"file": SimpleUploadedFile("c.txt", b"c")})).status_code == 403
    assert (await AsyncClient().get("/api/documents/")).status_code == 302  # to the login page
    assert await orm(Document.objects.count)() == 2
    assert (await upload(bob, "tool.exe", b"MZ")).status_code == 415
    assert not await orm(Collection.objects.filter(personal_of=bob).exists)()  # not even an empty collection


async def test_it_stores_an_upload_with_a_hostile_name_under_a_safe_one(worker, alice):
    response = await upload(alice, "../../etc/" + "n" * 250 + "\x07.md", b"# Long\n\nA very long name.")
    assert response.status_code == 201, response.content
    document = await orm(Document.objects.get)(pk=response.json()["document"]["document_id"])
    assert document.title == "n" * 250 + ".md"
    assert document.file.name.startswith("documents/") and ".." not in document.file.name
    assert Path(document.file.path).is_relative_to(Path(settings.MEDIA_ROOT)) and Path(document.file.path).is_file()


async def test_it_shows_why_a_corrupt_file_failed(worker, alice, chat_client):
    async with chat_client(alice) as socket:
        await listening()
        response = await upload(alice, "report.pdf", b"%PDF-1.7\n1 0 obj << /Kids [ broken")
        assert response.status_code == 201
        document_id = response.json()["document"]["document_id"]
        frames = await document_frames(socket, document_id, until="failed")
    assert frames[-1]["error"] == "the PDF is corrupt or unreadable"
    listed = (await (await signed_in(alice)).get("/api/documents/")).json()["documents"]
    assert [(d["status"], d["error"]) for d in listed] == [("failed", "the PDF is corrupt or unreadable")]


async def test_it_deletes_a_document_with_its_chunks_and_file(worker, alice, chat_client):
    async with chat_client(alice) as socket:
        await listening()
        response = await upload(alice, "kettle.md", b"# Kettle\n\nDescale the office kettle every March.")
        document_id = response.json()["document"]["document_id"]
        await document_frames(socket, document_id, until="ready")
        document = await orm(Document.objects.get)(pk=document_id)
        path = Path(document.file.path)
        assert path.is_file() and await orm(Chunk.objects.filter(document_id=document_id).count)() == 1

        deleted = await (await signed_in(alice)).delete(f"/api/documents/{document_id}/")
        assert deleted.status_code == 204
        [frame] = await document_frames(socket, document_id, until="deleted")
    assert frame["document_id"] == document_id
    assert not await orm(Document.objects.filter(pk=document_id).exists)()
    assert await orm(Chunk.objects.filter(document_id=document_id).count)() == 0
    assert not path.exists()


async def test_a_document_deleted_while_it_is_extracted_stays_deleted(alice):
    """The bug: the pipeline saved its copy of the document after extraction, and ``save()`` of a
    deleted row inserts it again — the deleted document came back, ready, with its file gone."""
    await database_sync_to_async(_delete_while_extracting)(alice)


def _delete_while_extracting(alice) -> None:
    collection = Collection.objects.create(name="alice-notes", owner=alice)
    first = do_add_document(collection, "a.md", b"# A\n\nAlpha is first.", enqueue=False).document
    doomed = do_add_document(collection, "b.md", b"# B\n\nBeta is second.", enqueue=False).document

    deleted: list[int] = []

    def more(limit: int) -> list[int]:
        # First asked once the first document is extracted, while the second is in flight.
        if not deleted:
            deleted.append(Document.objects.filter(pk=doomed.pk).delete()[0])
        return []

    do_process_documents([first.pk, doomed.pk], more=more)
    assert deleted == [1]
    assert not Document.objects.filter(pk=doomed.pk).exists()
    assert not Chunk.objects.filter(document_id=doomed.pk).exists()
    assert Document.objects.get(pk=first.pk).status == "ready"


async def test_it_searches_only_the_collections_a_conversation_chose(alice, bob, chat_client, tmp_path):
    collection = await database_sync_to_async(personal_collection)(alice)
    herons = await database_sync_to_async(do_add_document)(collection, "herons.md", HERONS.encode(), enqueue=False)
    await database_sync_to_async(do_process_documents)([herons.document.pk])
    handbook = await database_sync_to_async(make_collection)(
        "handbook", bob, {"handbook.md": "# Handbook\n\nThe coffee machine is cleaned every Friday."}, tmp_path,
        public=True,
    )  # fmt: skip
    secret = await orm(Collection.objects.create)(name="bob-secret", owner=bob)
    question = "When do the grey herons of Lake Ashdown build their nests?"

    async with chat_client(alice) as socket:
        await socket.send({"type": "ask", "conversation_id": None, "text": question,
                           "client_id": "5b1c3e8e-31a4-4c86-9d0c-1f1a1b2c3d4e", "collection_ids": [handbook.pk]})  # fmt: skip
        narrow, frames = await socket.until("finish")
        assert all(s["document_id"] != herons.document.pk for s in narrow["sources"])
        conversation_id = frames[0]["conversation_id"]

        client = await signed_in(alice)
        patched = await client.patch(
            f"/api/conversations/{conversation_id}/", {"collection_ids": None}, content_type="application/json"
        )
        assert patched.status_code == 200 and patched.json()["collection_ids"] is None
        wide, _ = await socket.answer(question, conversation_id=conversation_id)
        assert wide["sources"][0]["document_id"] == herons.document.pk

        # another user's private collection: refused, the question not stored
        await socket.send({"type": "ask", "conversation_id": None, "text": question,
                           "client_id": "6b1c3e8e-31a4-4c86-9d0c-1f1a1b2c3d4e", "collection_ids": [secret.pk]})  # fmt: skip
        error, _ = await socket.until("error")
        assert error["code"] == "not_found" and error["message"] == f"Collection {secret.pk} not found."
        for bad in ("all", [0], [True], [2**63], list(range(1, 52))):
            await socket.send({"type": "ask", "conversation_id": None, "text": question,
                               "client_id": "7b1c3e8e-31a4-4c86-9d0c-1f1a1b2c3d4e", "collection_ids": bad})  # fmt: skip
            error, _ = await socket.until("error")
            assert error["code"] == "invalid_field", bad

    for bad, code in (([secret.pk], "not_found"), ("all", "invalid_field")):
        refused = await client.patch(
            f"/api/conversations/{conversation_id}/", {"collection_ids": bad}, content_type="application/json"
        )
        assert refused.status_code == 400 and refused.json()["code"] == code
    detail = (await client.get(f"/api/conversations/{conversation_id}/")).json()
    assert detail["collection_ids"] is None and len(detail["messages"]) == 4


async def test_it_listens_again_after_the_database_drops_its_listener(alice, chat_client):
    collection = await database_sync_to_async(personal_collection)(alice)
    document = await orm(Document.objects.create)(collection=collection, title="waiting.md", sha256="0" * 64)
    async with chat_client(alice) as socket:
        await listening()
        first = await database_sync_to_async(_listener_pid)()
        await database_sync_to_async(_terminate)(first)
        async with asyncio.timeout(20):
            while (await database_sync_to_async(_listener_pid)()) in (None, first):
                await asyncio.sleep(0.05)  # waiting for the back-off and the new LISTEN
        await database_sync_to_async(notify_progress)(document.pk)
        frame = await socket.receive(timeout=10)
    assert frame == {
        "type": "document", "document_id": document.pk, "title": "waiting.md", "status": "pending",
        "chunks_done": 0, "chunks_total": 0, "error": "",
    }  # fmt: skip


def _terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


async def test_it_tells_every_socket_of_the_owner_in_every_server_process_with_redis(
    alice, bob, fake_groq, redis_server
):
    """Two server processes sharing Redis: each listens on its own, and the owner's sockets hear a
    notice wherever they are; another user's socket hears nothing."""
    env = {"REDIS_URL": redis_server["url"], "WEB_CONCURRENCY": 1, "DB_APPLICATION_NAME": "docchat-two"}
    servers = await asyncio.gather(*(asyncio.to_thread(LiveServer(fake_groq, **env).start) for _ in range(2)))
    collection = await database_sync_to_async(personal_collection)(alice)
    document = await orm(Document.objects.create)(collection=collection, title="shared.md", sha256="1" * 64)
    cookies = {user.pk: (await database_sync_to_async(session_cookie)(user)).decode() for user in (alice, bob)}

    def connect(server, user):
        url = server.url.replace("http", "ws") + "/ws/chat/"
        return websockets.connect(url, additional_headers={"Cookie": cookies[user.pk], "Origin": server.url})

    try:
        async with contextlib.AsyncExitStack() as stack:
            alices = [await stack.enter_async_context(connect(server, alice)) for server in servers]  # one in each
            bobs = await stack.enter_async_context(connect(servers[0], bob))
            await _every_process_listening(redis_server["client"], [alice.pk, bob.pk], "docchat-two-listener", 2)
            await database_sync_to_async(notify_progress)(document.pk)
            for socket in alices:
                frame = json.loads(await asyncio.wait_for(socket.recv(), 10))
                assert frame["type"] == "document" and frame["document_id"] == document.pk
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(bobs.recv(), 0.5)
    finally:
        await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers))


async def _every_process_listening(redis_client, user_ids: list[int], application_name: str, expected: int) -> None:
    """Until the ``expected`` server processes hold these users' sockets (named in Redis by the
    socket registry, ``<process>:<socket>``, which a socket joins just after its handshake) and
    each has its listener subscribed."""

    def processes() -> int:
        members = [m.decode() for user_id in user_ids for m in redis_client.zrange(f"docchat:sockets:{user_id}", 0, -1)]
        return len({member.split(":")[0] for member in members})

    def listeners() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND query = %s",
                [application_name, f"LISTEN {CHANNEL}"],
            )
            return cursor.fetchone()[0]

    async with asyncio.timeout(30):
        while await asyncio.to_thread(processes) < expected or await database_sync_to_async(listeners)() < expected:
            await asyncio.sleep(0.05)  # polling pg_stat_activity for the processes' LISTEN


async def test_it_lets_only_one_of_two_simultaneous_uploads_take_the_last_place(worker, alice, settings):
    settings.USER_DOCUMENTS_MAX_FILES = 1
    await database_sync_to_async(personal_collection)(alice)  # both race for the quota, not for creating it
    barrier = threading.Barrier(2)

    def add(name: str) -> str:
        upload = SimpleUploadedFile(name, f"{name} is a short note.".encode())
        barrier.wait()  # both at the check together
        try:
            do_add_personal_document(alice, upload)
            return "added"
        except QuotaExceeded:
            return "refused"

    outcomes = await asyncio.gather(*(db_async(add)(name) for name in ("one.txt", "two.txt")))
    assert sorted(outcomes) == ["added", "refused"]
    assert await orm(Document.objects.count)() == 1


async def test_it_refuses_an_oversized_upload_before_receiving_its_body(alice, settings):
    """Django's ASGI handler would spool the whole body to disk before the view's check."""
    from asgiref.testing import ApplicationCommunicator

    from config.asgi import application

    settings.MAX_UPLOAD_BYTES = 1024
    scope = {
        "type": "http", "method": "POST", "path": "/api/documents/", "query_string": b"", "http_version": "1.1",
        "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000), "headers": [(b"host", b"127.0.0.1")],
    }  # fmt: skip
    declared = ApplicationCommunicator(
        application, {**scope, "headers": [*scope["headers"], (b"content-length", b"99999999")]}
    )
    start = await declared.receive_output(10)  # nothing of the body was sent, or asked for
    assert start["status"] == 413
    assert json.loads((await declared.receive_output(10))["body"])["code"] == "file_too_large"

    chunked = ApplicationCommunicator(application, scope)  # no length declared: counted as it arrives
    for _ in range(4):
        await chunked.send_input({"type": "http.request", "body": b"x" * 1024 * 1024, "more_body": True})
    start = await chunked.receive_output(10)
    assert start["status"] == 413
