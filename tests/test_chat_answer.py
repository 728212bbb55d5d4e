"""Asking over the WebSocket: ack, start, streamed deltas, finish with sources; persisted."""

import pytest
from channels.db import database_sync_to_async

from chat.models import Message
from tests.conftest import streamed_text

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_it_streams_a_cited_answer_and_persists_both_messages(people, chat_client):
    async with chat_client(people["alice"]) as client:
        finish, frames = await client.answer("How far do zebras migrate?")

    kinds = [frame["type"] for frame in frames]
    assert kinds[0] == "ack" and "start" in kinds and kinds[-1] == "finish"
    assert kinds.count("delta") >= 1
    assert finish["status"] == "complete"
    assert "How far do zebras migrate?" in streamed_text(frames)
    assert streamed_text(frames) == finish["text"]
    assert finish["sources"][0]["title"] == "Zebra migration"
    assert finish["sources"][0]["n"] == 1
    assert 'class="cite"' in finish["html"]
    assert finish["usage"]["completion_tokens"] == 20
    assert {"embedding", "retrieval", "first_token", "total"} <= set(finish["timings"])

    answer = await database_sync_to_async(Message.objects.select_related("reply_to").get)(pk=finish["answer_id"])
    assert answer.status == "complete" and answer.text == finish["text"]
    assert answer.reply_to.text == "How far do zebras migrate?"
    assert answer.provider == "groq" and answer.model == "fake-model"
    assert answer.completion_tokens == 20
