"""The LLM provider interface: an async iterator of text deltas, and typed errors."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypedDict

from django.conf import settings

from ..errors import ChatError


class ChatMessage(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


class LLMError(ChatError):
    """Base of provider errors; ``str(exc)`` is the detail for the logs."""

    code = "llm_error"
    user_message = "The language model failed to answer."


class LLMTimeout(LLMError):
    """No first token, no next token, or no end in time (our guard), or the API timed out."""

    code = "llm_timeout"
    user_message = "The language model took too long to answer."


class LLMUnavailable(LLMError):
    """The provider refused or failed the request (connection, HTTP status, model error)."""

    code = "llm_unavailable"
    user_message = "The language model is unavailable right now."


class LLMRequestRejected(LLMError):
    """The provider refused this request for what it holds (HTTP 4xx other than 429, or a prompt
    longer than the model's context): the asker's error, so it does not count against the LLM
    breaker that every user's answers depend on."""

    code = "llm_request_rejected"
    user_message = "The language model could not take this question; try a shorter or simpler one."
    blames_dependency = False


class LLMStreamCut(LLMError):
    """The stream ended before the provider said it was finished."""

    code = "llm_stream_cut"
    user_message = "The answer stream was interrupted."


@dataclass
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Generation:
    """Per-request output of a provider besides the deltas (filled while streaming)."""

    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None


class LLMProvider(ABC):
    """What the answering code may rely on. The defaults suit a remote API; a local model on a
    small CPU overrides them."""

    name: str
    model: str
    max_concurrency: int | None = None  # generations it can run at once; None: no cap of its own
    max_prompt_sources: int | None = None  # passages in the prompt; None: every retrieved one
    passage_chars: int | None = None  # with brief_instructions: each passage cut to its part nearest the question
    brief_instructions: bool = False  # a small model: short passages, instructions repeated after the question
    generative: bool = True  # False: answers are the passages' own sentences (no model writes them)

    @property
    def label(self) -> str:
        """How the page names this answer mode."""
        return f"{self.name} · {self.model}"

    @property
    def first_token_timeout(self) -> float:
        return settings.LLM_FIRST_TOKEN_TIMEOUT

    @property
    @abstractmethod
    def context_tokens(self) -> int:
        """The model's context window: prompt and answer together."""

    @property
    def answer_tokens(self) -> int:
        """The most tokens an answer may take (kept free in the context)."""
        return settings.LLM_MAX_TOKENS

    async def prompt_counter(self) -> PromptCounter:
        """Counts a prompt's tokens, never fewer than the model will. A remote API's tokenizer is not
        shipped with us, so by default: UTF-8 bytes, which bound any byte-level BPE tokenizer's
        count (each token stands for at least one byte), plus the chat template's tokens."""
        return count_bytes

    @abstractmethod
    def stream(self, messages: list[ChatMessage], generation: Generation) -> AsyncIterator[str]:
        """Yield text deltas of the answer; fill ``generation`` with usage when known."""


PromptCounter = Callable[[list[ChatMessage]], int]
TEMPLATE_TOKENS_PER_MESSAGE = 8  # role header and end-of-turn markers of a chat template
TEMPLATE_TOKENS_PER_PROMPT = 8  # begin-of-text and the assistant header that opens the answer


def count_bytes(messages: list[ChatMessage]) -> int:
    """An upper bound of the tokens of ``messages`` for any byte-level BPE model."""
    content = sum(len(m["content"].encode(errors="surrogatepass")) for m in messages)
    return content + TEMPLATE_TOKENS_PER_MESSAGE * len(messages) + TEMPLATE_TOKENS_PER_PROMPT


@dataclass(frozen=True)
class StreamLimits:
    first_token: float
    idle: float
    total: float


async def guarded(deltas: AsyncIterator[str], limits: StreamLimits) -> AsyncIterator[str]:
    """Re-yield ``deltas``, raising ``LLMTimeout`` when the first delta, a gap between deltas, or
    the whole answer takes longer than ``limits``; closing this closes the provider's stream."""
    deadline = time.monotonic() + limits.total
    wait, first = limits.first_token, True
    iterator = deltas.__aiter__()
    try:
        while True:
            budget = min(wait, deadline - time.monotonic())
            if budget <= 0:
                raise LLMTimeout("the answer exceeded the total time limit")
            try:
                async with asyncio.timeout(budget):
                    delta = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                what = "first token" if first else "next token"
                raise LLMTimeout(f"no {what} within {budget:.1f}s") from None
            wait, first = limits.idle, False
            yield delta
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
