"""The extractive answer mode: no model writes anything; ``chat/extractive.py`` composes the answer
from the passages' own sentences. This provider only names the mode (the default offline)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from .base import ChatMessage, Generation, LLMProvider, LLMUnavailable


class ExtractiveProvider(LLMProvider):
    """Answers from the passages' own sentences (``compose``); there is no model to stream from."""

    name = "extractive"
    model = "quotes"
    generative = False

    @property
    def label(self) -> str:
        return "Quotes from your documents (offline; states nothing they do not say)"

    @property
    def context_tokens(self) -> int:
        return 0

    async def stream(self, messages: list[ChatMessage], generation: Generation) -> AsyncIterator[str]:
        raise LLMUnavailable("the extractive mode has no model to stream from")
        yield ""  # pragma: no cover  (makes this an async generator)
