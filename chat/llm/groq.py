"""Groq provider: AsyncGroq streaming chat completions over one shared, explicitly sized HTTP pool
(requested and read in ``sse``, as for any server speaking OpenAI's protocol)."""

from __future__ import annotations

import groq
import httpx
from django.conf import settings

from common.aio import per_loop

from .sse import CompletionsProvider, Service, open_client

SERVICE = Service("the Groq API", groq, httpx)


def _make_client() -> groq.AsyncGroq:
    return open_client(SERVICE, groq.AsyncGroq, api_key=settings.GROQ_API_KEY, base_url=settings.GROQ_BASE_URL)


# One client per event loop: its connection pool belongs to the loop that opened it. The server
# runs one loop, so in production this is one client per process.
get_client = per_loop(_make_client)


class GroqProvider(CompletionsProvider):
    name = "groq"
    service = SERVICE

    def client(self) -> groq.AsyncGroq:
        return get_client()

    @property
    def label(self) -> str:
        return f"Groq · {self.model}"

    @property
    def context_tokens(self) -> int:
        return settings.GROQ_CONTEXT_TOKENS
