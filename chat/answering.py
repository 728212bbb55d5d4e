"""One answer, end to end: wait for a slot → embed → retrieve → prompt → stream → persist.

Everything per request lives in this coroutine's locals and an ``Answer`` object; nothing is stored
on shared instances. Whatever happens (success, LLM error, stop, disconnect), the final state of
the answer is written and, if the client is still there, a ``finish`` frame is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError

from common.db import db_async
from documents.embedding import embed_query, ensure_loaded
from documents.search import Hit, search
from monitoring import metrics

from . import protocol
from .actions import Asked, do_finish_answer
from .breakers import CircuitOpen, breakers
from .limits import GenerationQueueTimeout, generation_slots
from .llm import get_provider
from .llm.base import Generation, LLMError, StreamLimits, guarded
from .models import Message
from .prompting import (
    NOT_FOUND_ANSWER,
    build_messages,
    extractive_answer,
    retrieval_query,
)
from .rendering import render_answer
from .streaming import DeltaCoalescer

logger = logging.getLogger(__name__)
Send = Callable[[dict], Awaitable[None]]


@dataclass
class Answer:
    """The state of one answer being produced (owned by its task, never shared)."""

    asked: Asked
    started: float = field(default_factory=time.monotonic)
    parts: list[str] = field(default_factory=list)
    deltas: int = 0
    sources: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    generation: Generation = field(default_factory=Generation)
    status: str = Message.Status.FAILED
    error_code: str = ""

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self.started, 4)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class RetrievalFailed(Exception):
    """Embedding or search failed, timed out, or its breaker is open; the question stays saved."""

    code = "retrieval_unavailable"

    def __init__(self, detail: str, retry_in: float | None = None) -> None:
        super().__init__(detail)
        wait = f" Please retry in {retry_in:.0f} s." if retry_in else " Please retry shortly."
        self.user_message = "Searching your documents failed (" + detail + "); your question was saved." + wait


async def answer_question(user, asked: Asked, send: Send) -> Answer:
    """Produce, stream and persist the answer to ``asked``; returns its final state."""
    answer = Answer(asked)
    provider = get_provider()
    try:
        await _produce(user, answer, provider, send)
        if answer.status != Message.Status.DEGRADED:
            answer.status = Message.Status.COMPLETE
    except asyncio.CancelledError:
        answer.status = Message.Status.STOPPED
        raise
    except (LLMError, GenerationQueueTimeout, RetrievalFailed) as exc:
        logger.warning("answer %s failed: %s", asked.answer_id, exc)
        answer.status, answer.error_code = Message.Status.FAILED, exc.code
        await send(protocol.error_frame(exc.code, exc.user_message, message_id=asked.answer_id))
    except Exception:
        logger.exception("answer %s failed", asked.answer_id)
        answer.error_code = "internal_error"
        await send(
            protocol.error_frame(
                "internal_error",
                "Something went wrong while answering.",
                message_id=asked.answer_id,
            )
        )
    finally:
        answer.mark("total")
        # Shielded: a second cancel (server shutting down) must not lose the final state.
        await asyncio.shield(_persist(answer, provider))
        logger.info("answer %s ended %s in %.2fs", asked.answer_id, answer.status, answer.timings["total"])
        metrics.record_answer(answer.status, answer.timings, answer.deltas)
        await send(_finish(answer))
    return answer


async def _produce(user, answer: Answer, provider, send: Send) -> None:
    asked = answer.asked

    async def tell_position(position: int) -> None:
        await send(protocol.queued_frame(asked.answer_id, position))

    async with generation_slots().slot(settings.GENERATION_QUEUE_TIMEOUT, tell_position):
        answer.mark("slot")
        await send(protocol.start_frame(asked.answer_id, provider.name, provider.model))
        hits = await _retrieve(user, answer)
        if not _has_relevant(hits):
            answer.sources = []  # nothing relevant: listing weak passages would look like support
            answer.parts.append(NOT_FOUND_ANSWER)
            await send(protocol.delta_frame(asked.answer_id, NOT_FOUND_ANSWER))
            return
        await send(protocol.status_frame(asked.answer_id, "generating"))
        # A small local model reads a long prompt slowly: it gets fewer passages.
        prompt_hits = hits[: getattr(provider, "max_prompt_sources", len(hits))]
        messages = build_messages(asked.question, asked.history, prompt_hits)
        try:
            async with breakers().guard("llm"):
                await _stream(answer, provider, messages, send)
        except (LLMError, CircuitOpen) as exc:
            if answer.parts:
                raise  # part of an answer was shown: keep it, marked failed
            await _degrade(answer, hits, exc, send)


async def _degrade(answer: Answer, hits: list[Hit], cause: Exception, send: Send) -> None:
    """The model is down: answer with the best passages themselves, clearly marked as such."""
    answer_id = answer.asked.answer_id
    answer.status = Message.Status.DEGRADED
    answer.error_code = "llm_circuit_open" if isinstance(cause, CircuitOpen) else cause.code  # type: ignore[attr-defined]
    if isinstance(cause, LLMError):
        await send(protocol.error_frame(cause.code, cause.user_message, message_id=answer_id))
    await send(protocol.status_frame(answer_id, "degraded"))
    text = extractive_answer(hits)
    answer.parts = [text]
    await send(protocol.delta_frame(answer_id, text))


async def _retrieve(user, answer: Answer) -> list[Hit]:
    query = retrieval_query(answer.asked.question, answer.asked.history)
    await ensure_loaded()
    try:
        async with (
            breakers().guard("embedding"),
            asyncio.timeout(settings.EMBEDDING_TIMEOUT),
        ):
            vector = await embed_query(query)
        answer.mark("embedding")
        async with breakers().guard("retrieval"):
            hits = await db_async(search)(user, query, vector)
    except CircuitOpen as exc:
        raise RetrievalFailed(f"{exc.name} is paused after repeated failures", exc.retry_in) from None
    except TimeoutError:
        raise RetrievalFailed("the query embedding timed out") from None
    except DatabaseError as exc:
        detail = "the search timed out" if "statement timeout" in str(exc) else "the database is unavailable"
        raise RetrievalFailed(detail) from exc
    answer.mark("retrieval")
    answer.sources = [hit.as_source(n) for n, hit in enumerate(hits, start=1)]
    return hits


def _has_relevant(hits: list[Hit]) -> bool:
    return any(hit.similarity >= settings.RETRIEVAL_MIN_SCORE or hit.keyword_match for hit in hits)


async def _stream(answer: Answer, provider, messages, send: Send) -> None:
    deltas = provider.stream(messages, answer.generation)
    limits = StreamLimits(
        getattr(provider, "first_token_timeout", settings.LLM_FIRST_TOKEN_TIMEOUT),
        settings.LLM_IDLE_TIMEOUT,
        settings.LLM_TOTAL_TIMEOUT,
    )
    answer_id = answer.asked.answer_id

    async def flush(text: str) -> None:
        await send(protocol.delta_frame(answer_id, text))

    async with DeltaCoalescer(flush, settings.STREAM_COALESCE_MS / 1000) as out:
        async for delta in guarded(deltas, limits):
            if not answer.parts:
                answer.mark("first_token")
            answer.parts.append(delta)
            answer.deltas += 1
            out.add(delta)


async def _persist(answer: Answer, provider) -> None:
    """Write the final state; one retry on a fresh connection if the database dropped ours."""
    try:
        await _write_final_state(answer, provider)
    except DatabaseError:
        logger.warning("saving answer %s failed; retrying once", answer.asked.answer_id)
        await _write_final_state(answer, provider)


async def _write_final_state(answer: Answer, provider) -> None:
    await db_async(do_finish_answer)(
        answer.asked.answer_id,
        text=answer.text,
        status=answer.status,
        sources=answer.sources,
        timings=answer.timings,
        usage=_usage(answer),
        provider=provider.name,
        model=provider.model,
        error_code=answer.error_code,
    )


def _usage(answer: Answer) -> dict:
    usage = answer.generation.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
    }


def _finish(answer: Answer) -> dict:
    return protocol.finish_frame(
        answer.asked.answer_id,
        answer.status,
        answer.text,
        render_answer(answer.text, len(answer.sources)),
        answer.sources,
        answer.timings,
        _usage(answer),
        answer.error_code,
    )


def finish_frame_for(message: Message) -> dict:
    """The ``finish`` frame of an answer already in the database (for resent questions)."""
    return protocol.finish_frame(
        message.pk,
        message.status,
        message.text,
        render_answer(message.text, len(message.sources)),
        message.sources,
        message.timings,
        {
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
        },
        message.error_code,
    )
