"""The LLM provider interface: an async iterator of text deltas, and typed errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, TypedDict


class ChatMessage(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


class LLMError(Exception):
    """Base of provider errors; ``code`` is what the user's error frame carries."""

    code = "llm_error"
    user_message = "The language model failed to answer."


class LLMTimeout(LLMError):
    code = "llm_timeout"
    user_message = "The language model took too long to answer."


class LLMUnavailable(LLMError):
    code = "llm_unavailable"
    user_message = "The language model is unavailable right now."


class LLMStreamCut(LLMError):
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


class LLMProvider(Protocol):
    name: str
    model: str

    def stream(self, messages: list[ChatMessage], generation: Generation) -> AsyncIterator[str]:
        """Yield text deltas of the answer; fill ``generation`` with usage when known."""
        ...


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
