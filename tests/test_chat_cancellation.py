"""Stop cancels the generation up to the HTTP call and keeps the partial answer; timeouts and
broken streams end an answer clearly. (A disconnect does not cancel: test_answer_survival.)"""

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat.models import Message

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]
LONG = "[[fake tokens=400 delay=0.02]] Where do zebras migrate?"


async def wait_for(condition, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)  # polling the fake server's counters


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
