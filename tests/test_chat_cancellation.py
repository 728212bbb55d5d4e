"""Stop and disconnect cancel the generation up to the HTTP call, and keep the partial answer."""

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat.models import Message
from tests.conftest import streamed_text

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]
LONG = "[[fake tokens=400 delay=0.02]] Where do zebras migrate?"


async def wait_for(condition, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)  # polling the fake server's counters


async def test_it_cancels_generation_when_the_client_disconnects(people, chat_client, fake_groq):
    async with chat_client(people["alice"]) as client:
        await client.ask(LONG)
        ack = await client.receive()
        frames = []
        while len([f for f in frames if f["type"] == "delta"]) < 3:
            frames.append(await client.receive())
    # leaving the block disconnected the client mid-answer
    await wait_for(lambda: fake_groq.fake.stats.disconnected == 1)
    assert fake_groq.fake.stats.completed == 0

    answer = await database_sync_to_async(Message.objects.get)(pk=ack["answer_id"])
    assert answer.status == "stopped"
    assert answer.text.startswith(streamed_text(frames))
    assert 0 < len(answer.text.split()) < 400


async def test_it_stops_on_request_and_keeps_the_partial_answer(people, chat_client, fake_groq):
    async with chat_client(people["alice"]) as client:
        await client.ask(LONG)
        ack = await client.receive()
        await client.until("delta")
        await client.send({"type": "stop", "answer_id": ack["answer_id"]})
        finish, _ = await client.until("finish")
        assert finish["status"] == "stopped"
        assert finish["text"]
        await wait_for(lambda: fake_groq.fake.stats.disconnected == 1)
        # the connection is still usable
        after, _ = await client.answer("Where do zebras migrate?")
        assert after["status"] == "complete"

    answer = await database_sync_to_async(Message.objects.get)(pk=ack["answer_id"])
    assert answer.status == "stopped" and answer.text == finish["text"]


async def test_it_times_out_a_model_that_never_sends_a_token(people, chat_client, fake_groq, settings):
    settings.LLM_FIRST_TOKEN_TIMEOUT = 0.5
    async with chat_client(people["alice"]) as client:
        await client.ask("[[fake mode=hang]] Where do zebras migrate?")
        error, _ = await client.until("error")
        finish, _ = await client.until("finish")
    assert error["code"] == "llm_timeout"
    assert finish["status"] == "degraded"  # the best passages instead of a generated answer
    assert "Serengeti" in finish["text"] and finish["error_code"] == "llm_timeout"
    await wait_for(lambda: fake_groq.fake.stats.disconnected == 1)  # the hung request was closed


async def test_it_fails_clearly_when_the_stream_is_cut(people, chat_client, fake_groq):
    async with chat_client(people["alice"]) as client:
        await client.ask("[[fake mode=cut cut_after=3]] Where do zebras migrate?")
        error, _ = await client.until("error")
        finish, _ = await client.until("finish")
        assert error["code"] == "llm_stream_cut"
        assert finish["status"] == "failed"
        ok, _ = await client.answer("Where do zebras migrate?")
        assert ok["status"] == "complete"
    answer = await database_sync_to_async(Message.objects.get)(pk=finish["answer_id"])
    assert answer.status == "failed" and answer.error_code == "llm_stream_cut"


async def test_it_reports_an_llm_http_error(people, chat_client):
    async with chat_client(people["alice"]) as client:
        await client.ask("[[fake mode=error status=503]] Where do zebras migrate?")
        error, _ = await client.until("error")
        finish, _ = await client.until("finish")
    assert error["code"] == "llm_unavailable"
    assert finish["status"] == "degraded"


@pytest.mark.slow
async def test_it_saves_streaming_answers_as_stopped_when_the_server_shuts_down(people, fake_groq):
    import json as jsonlib
    import uuid

    import websockets

    from tests.conftest import LiveServer, session_cookie

    server = await asyncio.to_thread(LiveServer(fake_groq).start)
    cookie = await database_sync_to_async(session_cookie)(people["alice"])
    try:
        headers = {"Cookie": cookie.decode(), "Origin": server.url}
        async with websockets.connect(server.url.replace("http", "ws") + "/ws/chat/", additional_headers=headers):
            pass  # a page that was open before (a reload closes its socket first)
        async with websockets.connect(server.url.replace("http", "ws") + "/ws/chat/", additional_headers=headers) as ws:
            await ws.send(
                jsonlib.dumps(
                    {
                        "type": "ask",
                        "conversation_id": None,
                        "client_id": str(uuid.uuid4()),
                        "text": "[[fake tokens=600 delay=0.05]] Where do zebras migrate?",
                    }
                )
            )
            ack = jsonlib.loads(await ws.recv())
            while jsonlib.loads(await ws.recv())["type"] != "delta":
                pass
            await asyncio.to_thread(server.stop)
    finally:
        await asyncio.to_thread(server.stop)
    answer = await database_sync_to_async(Message.objects.get)(pk=ack["answer_id"])
    assert answer.status == "stopped" and answer.text.startswith("You")
