"""Streaming chat completions from a server speaking OpenAI's protocol, through its SDK (Groq's,
or OpenAI's for any OpenAI-compatible server): the client with its explicitly sized HTTP pool, the
raw server-sent events, and the SDK's errors as ours.

The raw SSE lines are parsed here instead of through the SDKs' typed chunk objects: measured on
this machine, ~9 µs per chunk instead of ~55-70 µs, which matters at 200 streams.
"""

from __future__ import annotations

import asyncio
import json
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, TypeVar

from django.conf import settings

from .base import (
    ChatMessage,
    Generation,
    LLMError,
    LLMProvider,
    LLMRequestRejected,
    LLMStreamCut,
    LLMTimeout,
    LLMUnavailable,
)


@dataclass(frozen=True)
class Service:
    """A model server and the SDK that speaks to it."""

    name: str  # how errors (logs only) name it: "the Groq API"
    sdk: ModuleType  # groq or openai: their error classes have the same names
    http: ModuleType  # the SDK's HTTP library (httpx, httpx2): pool limits, timeouts, transport errors


class _Closable(Protocol):
    async def close(self) -> None: ...


Client = TypeVar("Client", bound=_Closable)


def open_client(service: Service, client_class: Callable[..., Client], **options: Any) -> Client:
    """An SDK client (``options``: api_key, base_url) whose HTTP pool is sized above the generation
    limit (the SDKs' default of 100 connections made half of 200 concurrent chats wait a whole
    answer); closed when the running event loop ends."""
    http = service.http
    limits = http.Limits(
        max_connections=settings.LLM_HTTP_MAX_CONNECTIONS,
        max_keepalive_connections=settings.LLM_HTTP_MAX_CONNECTIONS,
    )
    timeout = http.Timeout(
        connect=5.0,
        # Our own guard enforces the first-token and idle limits; the socket must outlast both.
        read=max(settings.LLM_FIRST_TOKEN_TIMEOUT, settings.LLM_IDLE_TIMEOUT) + 1.0,
        write=10.0,
        pool=settings.GENERATION_QUEUE_TIMEOUT,
    )
    client = client_class(
        **options,
        max_retries=0,  # retries would hide outages and double the latency of failures
        timeout=timeout,
        # aiohttp under the SDK's httpx interface (the SDK's own option for high concurrency):
        # httpcore's pool rescans every connection on each request and each close, which was 24 %
        # of the server's GIL time in a 200-chat burst (py-spy; bench/RESULTS.md).
        http_client=service.sdk.DefaultAioHttpClient(limits=limits, timeout=timeout),
    )
    closer = asyncio.get_running_loop().create_task(_close_when_the_loop_ends(client))
    _closers.add(closer)
    closer.add_done_callback(_closers.discard)
    return client


_closers: set[asyncio.Task] = set()


async def _close_when_the_loop_ends(client: _Closable) -> None:
    """Waits until the event loop shuts down (which cancels every task left), then closes the
    client's connections cleanly instead of leaving aiohttp to complain at exit."""
    try:
        await asyncio.Event().wait()
    finally:
        await client.close()


class CompletionsProvider(LLMProvider):
    """A provider streaming from a server that speaks OpenAI's chat-completions protocol."""

    service: Service
    request_options: Mapping[str, Any] = {}  # more parameters of the request, for this kind of server

    def __init__(self, model: str) -> None:
        self.model = model

    @abstractmethod
    def client(self) -> Any:
        """The SDK client of the running event loop."""

    def stream(self, messages: list[ChatMessage], generation: Generation) -> AsyncIterator[str]:
        return relay(self, messages, generation)


async def relay(
    provider: CompletionsProvider, messages: list[ChatMessage], generation: Generation
) -> AsyncIterator[str]:
    """The text deltas of a streaming chat completion (requested when iteration starts), usage and
    finish reason into ``generation``; the SDK's errors as ours. Closing this closes the HTTP
    response, which tells the server to stop."""
    service = provider.service
    errors = service.sdk
    try:
        async with provider.client().chat.completions.with_streaming_response.create(
            model=provider.model,
            messages=messages,
            stream=True,
            max_tokens=settings.LLM_MAX_TOKENS,
            temperature=settings.LLM_TEMPERATURE,
            **provider.request_options,
        ) as response:
            async for line in response.iter_lines():
                delta = parse_event(line, generation)
                if delta:
                    yield delta
    except errors.APITimeoutError as exc:
        raise LLMTimeout(f"{service.name} timed out") from exc
    except errors.APIConnectionError as exc:
        raise LLMUnavailable(f"cannot reach {service.name}") from exc
    except errors.RateLimitError as exc:
        raise LLMUnavailable(f"{service.name} is rate limiting us") from exc
    except errors.APIStatusError as exc:
        raise status_error(service, exc.status_code) from exc
    except service.http.TransportError as exc:  # after the response began: the stream broke off
        raise LLMStreamCut(f"the stream from {service.name} was cut ({type(exc).__name__})") from exc
    if generation.finish_reason is None:
        raise LLMStreamCut(f"the stream from {service.name} ended without finishing")


def status_error(service: Service, status: int) -> LLMError:
    """An HTTP error status as our error: 408, 429 and 5xx are the server's trouble; any other 4xx
    (a context-length error, a bad parameter) is this request's."""
    detail = f"{service.name} answered HTTP {status}"
    if 400 <= status < 500 and status not in (408, 429):
        return LLMRequestRejected(detail)
    return LLMUnavailable(detail)


def parse_event(line: str, generation: Generation) -> str:
    """The text delta in one SSE line ('' if none); usage and finish reason go to ``generation``."""
    if not line.startswith("data:"):
        return ""
    payload = line[5:].strip()
    if payload == "[DONE]":
        return ""
    try:
        event = json.loads(payload)
    except ValueError as exc:
        raise LLMError("the model's stream sent malformed data") from exc
    if "error" in event:
        raise LLMUnavailable(f"the model's stream reported an error: {str(event['error'])[:200]}")
    usage = event.get("usage") or (event.get("x_groq") or {}).get("usage")
    if usage:
        generation.usage.prompt_tokens = usage.get("prompt_tokens")
        generation.usage.completion_tokens = usage.get("completion_tokens")
    choices = event.get("choices") or []
    if not choices:
        return ""
    if choices[0].get("finish_reason"):
        generation.finish_reason = choices[0]["finish_reason"]
    return (choices[0].get("delta") or {}).get("content") or ""
