"""OpenAI-compatible provider: a model server of one's own (Ollama, vLLM, llama.cpp's server, LM
Studio) or OpenAI itself, through the openai SDK with ``base_url``, over one shared, explicitly
sized HTTP pool (requested and read in ``sse``, as for Groq)."""

from __future__ import annotations

import httpx2
import openai
from django.conf import settings

from common.aio import per_loop

from .sse import CompletionsProvider, Service, open_client

SERVICE = Service("the OpenAI-compatible model server", openai, httpx2)


def _make_client() -> openai.AsyncOpenAI:
    # Local servers take any key, but the SDK insists on one.
    api_key = settings.OPENAI_API_KEY or "not-needed"
    return open_client(SERVICE, openai.AsyncOpenAI, api_key=api_key, base_url=settings.OPENAI_BASE_URL)


# One client per event loop, as for Groq: its connection pool belongs to the loop that opened it.
get_client = per_loop(_make_client)


class OpenAIProvider(CompletionsProvider):
    name = "openai"
    service = SERVICE
    # Servers that count tokens send the counts in a last event (OpenAI, vLLM, Ollama, llama.cpp's
    # llama-server); the others ignore the option.
    request_options = {"stream_options": {"include_usage": True}}

    def client(self) -> openai.AsyncOpenAI:
        return get_client()

    @property
    def label(self) -> str:
        return f"{self.model} (your model server)"

    @property
    def context_tokens(self) -> int:
        return settings.OPENAI_CONTEXT_TOKENS
