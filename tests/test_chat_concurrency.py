"""Concurrent chats get their own answers; sequential chats leak no connections or models."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from chat.llm import groq as groq_llm
from documents import embedding
from tests.conftest import count_connections, make_user, streamed_text

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_it_gives_ten_simultaneous_users_each_their_own_answer(people, chat_client, fake_groq):
    fake_groq.configure(tokens=30, delay=0.01)
    users = [await sync_to_async(make_user)(f"user{i}") for i in range(10)]

    async def chat(i, user):
        async with chat_client(user) as client:
            return await client.answer(f"What does the handbook say about coffee, question {i}?")

    results = await asyncio.gather(*(chat(i, user) for i, user in enumerate(users)))

    for i, (finish, frames) in enumerate(results):
        assert finish["status"] == "complete"
        assert f"question {i}?" in finish["text"]
        others = [f"question {j}?" for j in range(10) if j != i]
        assert not any(other in streamed_text(frames) for other in others)
        assert all(frame.get("answer_id") in (None, finish["answer_id"]) for frame in frames if frame["type"] != "ack")
    assert fake_groq.fake.stats.max_active > 1  # they really overlapped at the LLM


async def test_it_keeps_connections_within_the_pool_over_100_sequential_chats(people, chat_client, fake_groq, settings):
    settings.WS_FRAME_BURST = 200  # 100 questions as fast as answers come: a script's pace, not a person's
    model, llm_client = embedding.get_engine(), groq_llm.get_client()
    async with chat_client(people["alice"]) as client:
        for i in range(100):
            finish, _ = await client.answer(f"Where do zebras migrate? #{i}")
            assert finish["status"] == "complete", finish

    assert await count_connections() <= settings.DB_POOL_MAX
    # The same model and LLM client served all 100 (created once per process / event loop).
    assert embedding.get_engine() is model
    assert groq_llm.get_client() is llm_client
    assert fake_groq.fake.stats.completed == 100
