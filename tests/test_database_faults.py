"""Database faults against a real server process: its connections killed mid-chat (what a
Postgres restart does), and a pool far smaller than the load."""

import asyncio
import json
import time
import uuid

import pytest
import websockets
from channels.db import database_sync_to_async
from django.db import connection

from chat.models import Message
from tests.conftest import LiveServer, session_cookie

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


async def start_server(fake_groq, name: str, **env) -> LiveServer:
    return await asyncio.to_thread(
        LiveServer(
            fake_groq, DB_APPLICATION_NAME=name, MAX_GENERATIONS_PER_USER=100, WS_MAX_SOCKETS_PER_USER=100, **env
        ).start
    )


async def ws_chat(server: LiveServer, cookie: str, text: str, streaming: asyncio.Semaphore | None = None) -> list[dict]:
    """Ask ``text`` over a real WebSocket; return every frame up to the answer's finish."""
    headers = {"Cookie": cookie, "Origin": server.url}
    frames = []
    async with websockets.connect(server.url.replace("http", "ws") + "/ws/chat/", additional_headers=headers) as ws:
        await ws.send(
            json.dumps({"type": "ask", "conversation_id": None, "client_id": str(uuid.uuid4()), "text": text})
        )
        while True:
            frames.append(json.loads(await ws.recv()))
            if frames[-1]["type"] == "delta" and streaming and len([f for f in frames if f["type"] == "delta"]) == 1:
                streaming.release()
            if frames[-1]["type"] == "finish" or (frames[-1]["type"] == "error" and "answer_id" not in frames[-1]):
                return frames


def server_connections(name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name])
        return cursor.fetchone()[0]


def kill_server_connections(name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s", [name]
        )
        return cursor.fetchone()[0]


async def test_it_survives_its_database_connections_being_killed_during_20_chats(people, fake_groq):
    server = await start_server(fake_groq, "docchat-dbfault")
    cookie = (await database_sync_to_async(session_cookie)(people["alice"])).decode()
    try:
        streaming = asyncio.Semaphore(0)
        text = "[[fake tokens=40 delay=0.05]] Where do zebras migrate? {}"
        chats = [asyncio.create_task(ws_chat(server, cookie, text.format(i), streaming)) for i in range(20)]
        async with asyncio.timeout(60):
            for _ in range(20):
                await streaming.acquire()  # all 20 are streaming now
        killed = await database_sync_to_async(kill_server_connections)("docchat-dbfault")
        async with asyncio.timeout(120):
            results = await asyncio.gather(*chats)
        after = await ws_chat(server, cookie, "Where do zebras migrate?")  # a new chat after the "restart"
        in_use = await database_sync_to_async(server_connections)("docchat-dbfault")
    finally:
        await asyncio.to_thread(server.stop)

    assert killed >= 1
    for frames in results:
        finish = frames[-1]
        assert finish["type"] == "finish" and finish["status"] in {"complete", "failed"}
    assert after[-1]["status"] == "complete"
    statuses = await database_sync_to_async(
        lambda: list(Message.objects.filter(role="assistant").values_list("status", flat=True))
    )()
    assert len(statuses) == 21 and "pending" not in statuses  # every final state was written
    assert in_use <= 10  # back within the pool (DB_POOL_MAX default)


async def test_it_neither_deadlocks_nor_hangs_with_a_pool_of_two_and_ten_chats(people, fake_groq):
    server = await start_server(fake_groq, "docchat-small-pool", DB_POOL_MAX=2, DB_POOL_MIN=0, DB_POOL_TIMEOUT=10)
    cookie = (await database_sync_to_async(session_cookie)(people["alice"])).decode()
    try:
        started = time.monotonic()
        text = "[[fake tokens=30 delay=0.02]] Where do zebras migrate? {}"
        async with asyncio.timeout(120):  # far above every configured timeout: a hang fails here
            results = await asyncio.gather(*(ws_chat(server, cookie, text.format(i)) for i in range(10)))
        elapsed = time.monotonic() - started
        connections = await database_sync_to_async(server_connections)("docchat-small-pool")
    finally:
        await asyncio.to_thread(server.stop)
    finishes = [frames[-1] for frames in results]
    assert all(f["type"] == "finish" or f.get("code") for f in finishes)  # finished, or a clear error
    assert sum(f.get("status") == "complete" for f in finishes) >= 8, finishes
    assert connections <= 2
    assert elapsed < 60


REFUSE_FINAL_WRITES = """
CREATE FUNCTION refuse_final_writes() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'final writes refused (test fault)'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_final_writes BEFORE UPDATE ON chat_message
FOR EACH ROW WHEN (NEW.status <> 'pending') EXECUTE FUNCTION refuse_final_writes();
"""
ALLOW_FINAL_WRITES = "DROP TRIGGER refuse_final_writes ON chat_message; DROP FUNCTION refuse_final_writes();"


def run_sql(statements: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statements)


async def test_it_sends_the_finish_and_keeps_the_answer_when_its_final_writes_fail(people, chat_client):
    await database_sync_to_async(run_sql)(REFUSE_FINAL_WRITES)
    try:
        async with chat_client(people["alice"]) as client:
            finish, frames = await client.answer("[[fake tokens=15]] Where do zebras migrate?")
        streamed = "".join(f["text"] for f in frames if f["type"] == "delta")
        assert finish["type"] == "finish" and finish["status"] == "complete" and finish["text"] == streamed
        stored = await database_sync_to_async(Message.objects.get)(pk=finish["answer_id"])
        assert stored.status == "pending"  # both writes were refused...
    finally:
        await database_sync_to_async(run_sql)(ALLOW_FINAL_WRITES)

    # ...and the answer, kept in memory, is written once the database takes writes again.
    async with asyncio.timeout(20):
        while stored.status == "pending":
            await asyncio.sleep(0.2)  # polling the row the background retry writes
            stored = await database_sync_to_async(Message.objects.get)(pk=finish["answer_id"])
    assert stored.status == "complete" and stored.text == streamed
