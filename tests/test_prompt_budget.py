"""The prompt fits the model's context, measured with the model's own tokenizer: memory goes
first, then passages, and a question too long for the model is its asker's error."""

import asyncio

import pytest

from chat.llm.base import ChatMessage, Generation, LLMRequestRejected, count_bytes
from chat.llm.groq import GroqProvider
from chat.llm.local import LocalProvider
from chat.prompting import Turn, prompt_for
from documents.search import Hit

TURN = "Tell me again about the great zebra migration across the Serengeti and its river crossings. " * 12


def hit(n: int, chars: int = 1500) -> Hit:
    text = ("Zebras cross the Mara river in August. " * 80)[:chars]
    return Hit(n, n, f"doc{n}.md", None, "Migration", text, 0.8, 0.5, True)


def conversation(turns: int) -> list[Turn]:
    return [Turn("user" if i % 2 == 0 else "assistant", f"{i}: {TURN}") for i in range(turns)]


def test_it_drops_the_oldest_memory_first_then_passages_to_fit_the_context(settings):
    settings.GROQ_CONTEXT_TOKENS = 6144
    settings.LLM_MAX_TOKENS = 512
    settings.MEMORY_WINDOW_TOKENS = 100_000
    provider = GroqProvider("fake-model")
    budget = 6144 - 512 - 16

    messages, given = prompt_for(provider, "Where do zebras cross?", conversation(12), [hit(1), hit(2)], count_bytes)
    assert count_bytes(messages) <= budget
    assert len(given) == 2  # both passages kept: memory made room
    kept = [m["content"] for m in messages[1:-1]]
    assert kept and kept[-1].startswith("11:")  # the most recent turns, in order
    assert not any(text.startswith("0:") for text in kept)

    settings.GROQ_CONTEXT_TOKENS = 2048
    messages, given = prompt_for(provider, "Where do zebras cross?", conversation(12), [hit(1), hit(2)], count_bytes)
    assert count_bytes(messages) <= 2048 - 512 - 16
    assert len(messages) == 2 and len(given) == 1  # no memory, one passage


def test_it_cuts_the_last_passage_to_its_part_nearest_the_question(settings):
    settings.GROQ_CONTEXT_TOKENS = 1400
    settings.LLM_MAX_TOKENS = 512
    provider = GroqProvider("fake-model")
    messages, given = prompt_for(provider, "Where do zebras cross?", [], [hit(1, 3000)], count_bytes)
    assert count_bytes(messages) <= 1400 - 512 - 16
    assert 200 <= len(given[0].text) < 3000 and "Mara river" in given[0].text


def test_it_rejects_a_question_longer_than_the_models_context(settings):
    settings.GROQ_CONTEXT_TOKENS = 1024
    settings.LLM_MAX_TOKENS = 512
    with pytest.raises(LLMRequestRejected) as raised:
        prompt_for(GroqProvider("fake-model"), "why? " * 200, [], [hit(1)], count_bytes)
    assert raised.value.blames_dependency is False and raised.value.code == "llm_request_rejected"


def test_the_byte_count_never_undercounts_the_local_models_tokenizer():
    count = asyncio.run(LocalProvider().prompt_counter())
    for text in (TURN, "Ünïcödé – “quotes” 東京 🦓 " * 20, "x" * 3000):
        messages: list[ChatMessage] = [{"role": "user", "content": text}]
        assert count(messages) <= count_bytes(messages)


@pytest.mark.slow
def test_the_local_model_answers_after_a_long_conversation_within_its_context(settings):
    # Before the fix: ~4,000 tokens of memory and passages went to a 2,048-token model, and
    # llama.cpp refused the prompt ("exceed context window").
    settings.MEMORY_WINDOW_TOKENS = 100_000
    settings.LLM_LOCAL_CONTEXT = 2048
    provider = LocalProvider()
    count = asyncio.run(provider.prompt_counter())
    messages, given = prompt_for(provider, "Where do zebras cross?", conversation(16), [hit(1), hit(2)], count)
    assert count(messages) <= 2048 - provider.answer_tokens - 16
    assert len(given) == 2 and len(messages) > 2  # some memory still fits beside both passages

    async def answer() -> tuple[str, Generation]:
        generation = Generation()
        parts = [delta async for delta in provider.stream(messages, generation)]
        return "".join(parts), generation

    text, generation = asyncio.run(answer())
    assert text.strip()
    assert generation.usage.prompt_tokens is not None
