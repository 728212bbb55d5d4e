"""One answer, end to end: wait for a slot → embed → retrieve → prompt → stream → persist.

Everything per request lives in this coroutine's locals and an ``Answer`` object; nothing is stored
on shared instances. Whatever happens (success, LLM error, stop, server shutdown), the final state
of the answer is written and a ``finish`` frame is sent to whoever listens (``live``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError

from common.db import db_async
from documents.embedding import embed_query, ensure_loaded
from documents.relevance import ANSWER, NOT_FOUND, UNSURE, Retrieval, retrieve
from documents.search import Hit
from monitoring import metrics

from . import extractive, protocol
from .actions import Asked, do_finish_answer
from .breakers import Call, CircuitOpen, breakers
from .errors import ChatError, InternalError
from .grounding import Support, check_answer, nothing_supported
from .llm import get_provider
from .llm.base import ChatMessage, Generation, LLMError, LLMProvider, StreamLimits, guarded
from .models import Message
from .prompting import (
    DEGRADED_PREFIX,
    FALLBACK_PREFIX,
    NOT_FOUND_ANSWER,
    NOTHING_NEW_ANSWER,
    UNSURE_PREFIX,
    Turn,
    cited_numbers,
    prompt_for,
    retrieval_query,
    support_block,
)
from .slots import generation_slots
from .streaming import DeltaCoalescer

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

logger = logging.getLogger(__name__)
Send = Callable[[protocol.OutgoingFrame], Awaitable[None]]
Ending = tuple[str, str]  # (status, error_code) of an answer that was cancelled


@dataclass
class Answer:
    """The state of one answer being produced (owned by its task, never shared)."""

    asked: Asked
    started: float = field(default_factory=time.monotonic)
    parts: list[str] = field(default_factory=list)
    deltas: int = 0
    sources: list[dict] = field(default_factory=list)
    support: Support = field(default_factory=Support)
    timings: dict[str, float] = field(default_factory=dict)
    generation: Generation = field(default_factory=Generation)
    status: str = Message.Status.FAILED
    error_code: str = ""

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self.started, 4)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def final(self, provider: LLMProvider) -> Message:
        """The answer's final state as an unsaved copy of its row (persisted and sent as is)."""
        usage = self.generation.usage
        return Message(
            pk=self.asked.answer_id,
            role=Message.Role.ASSISTANT,
            text=self.text,
            status=self.status,
            sources=self.sources,
            support=self.support,
            timings=self.timings,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            provider=provider.name,
            model=provider.model,
            error_code=self.error_code,
        )


class RetrievalFailed(ChatError):
    """Embedding or search failed, timed out, or its breaker is open; the question stays saved."""

    code = "retrieval_unavailable"

    def __init__(self, detail: str, retry_in: float | None = None) -> None:
        wait = f" Please retry in {retry_in:.0f} s." if retry_in else " Please retry shortly."
        super().__init__(
            detail, user_message=f"Searching your documents failed ({detail}); your question was saved.{wait}"
        )


STOPPED: Ending = (Message.Status.STOPPED, "")


def stopped() -> Ending:
    return STOPPED


async def answer_question(
    user: AbstractBaseUser, asked: Asked, send: Send, cancelled_as: Callable[[], Ending] = stopped
) -> Answer:
    """Produce, stream and persist the answer to ``asked``; returns its final state. If the task
    is cancelled, ``cancelled_as()`` says why (stopped by the user, or interrupted)."""
    answer = Answer(asked)
    provider = get_provider(asked.provider)
    try:
        await _produce(user, answer, provider, send)
        if answer.status != Message.Status.DEGRADED:
            answer.status = Message.Status.COMPLETE
    except asyncio.CancelledError:
        answer.status, answer.error_code = cancelled_as()
        raise
    except Exception as exc:
        await _fail(answer, exc, send)
    finally:
        answer.mark("total")
        final = answer.final(provider)
        # Shielded: a second cancel (server shutting down) must not lose the final state. It never
        # raises: the user gets the finish frame even if the database refused the write.
        await asyncio.shield(_persist(final))
        logger.info("answer %s ended %s in %.2fs", asked.answer_id, answer.status, answer.timings["total"])
        metrics.record_answer(answer.status, answer.timings, answer.deltas)
        await send(protocol.finish_frame(final))
    return answer


async def _fail(answer: Answer, exc: Exception, send: Send) -> None:
    """The answer failed: tell the user why (a ``ChatError``), or log the bug and say so."""
    if isinstance(exc, ChatError):
        logger.warning("answer %s failed: %s", answer.asked.answer_id, exc)
        error = exc
    else:
        logger.exception("answer %s failed", answer.asked.answer_id)
        error = InternalError(user_message="Something went wrong while answering.")
    answer.status, answer.error_code = Message.Status.FAILED, error.code
    await send(protocol.error_frame(error, answer_id=answer.asked.answer_id))


async def _produce(user: AbstractBaseUser, answer: Answer, provider: LLMProvider, send: Send) -> None:
    asked = answer.asked

    async def tell_position(position: int) -> None:
        await send(protocol.queued_frame(asked.answer_id, position))

    async with generation_slots().slot(settings.GENERATION_QUEUE_TIMEOUT, tell_position):
        answer.mark("slot")
        await send(protocol.start_frame(asked.answer_id, provider.name, provider.model))
        retrieval, vector = await _retrieve(user, answer)
        verdict = await settle(retrieval, vector)
        if verdict == NOT_FOUND:
            answer.sources = []  # nothing relevant: listing weak passages would look like support
            await _say(answer, NOT_FOUND_ANSWER, send)
            return
        confident = verdict == ANSWER
        if not provider.generative or not confident:
            # No model, or passages only loosely related: their own sentences, never a model's guess.
            await _answer_extractively(answer, retrieval.hits, vector, send, "" if confident else UNSURE_PREFIX)
            return
        await send(protocol.status_frame(asked.answer_id, "generating"))
        try:
            count = await provider.prompt_counter()
            messages, given = prompt_for(provider, asked.question, asked.history, retrieval.hits, count)
            async with breakers().guard("llm") as call:
                await _stream(answer, provider, messages, send, call)
        except (LLMError, CircuitOpen) as exc:
            if answer.parts:
                raise  # part of an answer was shown: keep it, marked failed
            await _degrade(answer, retrieval.hits, vector, exc, send)
            return
        await _check_grounding(answer, given, retrieval.hits, vector, send)


async def settle(retrieval: Retrieval, vector: list[float]) -> str:
    """The gate's verdict, settled in its "unsure" band by the passages' closest sentence: close
    enough, an answer; far from everything, not found (documents/relevance.py has the rest)."""
    if retrieval.verdict != UNSURE:
        return retrieval.verdict
    closest = await extractive.closest_sentence(retrieval.hits, vector)
    if (
        closest >= settings.RELEVANCE_SENTENCE_SIMILARITY
        and retrieval.evidence.coverage >= settings.RELEVANCE_SENTENCE_MIN_COVERAGE
    ):
        return ANSWER
    return NOT_FOUND if closest < settings.RELEVANCE_MIN_SENTENCE_SIMILARITY else UNSURE


async def _say(answer: Answer, text: str, send: Send) -> None:
    """Add ``text`` to the answer and send it."""
    answer.parts.append(text)
    await send(protocol.delta_frame(answer.asked.answer_id, text))


async def quoted_answer(question: str, history: list[Turn], hits: list[Hit], vector: list[float], prefix: str) -> str:
    """``prefix`` and the passages' own sentences that answer the question (``chat/extractive.py``),
    or a word that there is nothing new to quote (the chat and ``manage.py eval`` alike)."""
    return prefix + (await extractive.compose(question, history, hits, vector) or NOTHING_NEW_ANSWER)


def grounding_of(text: str, passages: list[Hit], question: str) -> Support:
    """The grounding check of ``text`` against ``passages``, numbered from 1 as its citations are."""
    return check_answer(text, {n: hit.text for n, hit in enumerate(passages, start=1)}, question)


async def _answer_extractively(
    answer: Answer, hits: list[Hit], vector: list[float], send: Send, prefix: str = ""
) -> None:
    asked = answer.asked
    text = await quoted_answer(asked.question, asked.history, hits, vector, prefix)
    answer.mark("first_token")
    await _say(answer, text, send)
    answer.support = grounding_of(answer.text, hits, asked.question)


async def _check_grounding(answer: Answer, given: list[Hit], hits: list[Hit], vector: list[float], send: Send) -> None:
    """Check the model's sentences against the passages they cite; an answer none of whose claims
    held up is replaced by the extractive one (the reader saw it stream: the finish frame says why)."""
    if not cited_numbers(answer.text):
        await _show_support(answer, given, send)
    support = grounding_of(answer.text, given, answer.asked.question)
    metrics.record_grounding(support.get("unsupported", 0), fell_back=nothing_supported(support))
    if nothing_supported(support):
        model_text = answer.text
        answer.parts = []
        await _answer_extractively(answer, hits, vector, send, FALLBACK_PREFIX)
        answer.support["fallback"] = model_text
        return
    answer.support = support


async def _show_support(answer: Answer, given: list[Hit], send: Send) -> None:
    """The model cited nothing: quote the passages it was given under its answer, labelled so."""
    await _say(answer, support_block(given), send)


async def _degrade(
    answer: Answer, hits: list[Hit], vector: list[float], cause: LLMError | CircuitOpen, send: Send
) -> None:
    """The model is down: answer with the passages' own sentences, clearly marked as such."""
    answer_id = answer.asked.answer_id
    answer.status, answer.error_code = Message.Status.DEGRADED, cause.code
    if isinstance(cause, LLMError):  # an open breaker is no news for this answer: just degrade
        await send(protocol.error_frame(cause, answer_id=answer_id))
    await send(protocol.status_frame(answer_id, "degraded"))
    await _answer_extractively(answer, hits, vector, send, DEGRADED_PREFIX)


async def _retrieve(user: AbstractBaseUser, answer: Answer) -> tuple[Retrieval, list[float]]:
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
            retrieval = await db_async(retrieve)(user, query, vector, collections=answer.asked.collection_ids)
    except CircuitOpen as exc:
        raise RetrievalFailed(f"{exc.name} is paused after repeated failures", exc.retry_in) from None
    except TimeoutError:
        raise RetrievalFailed("the query embedding timed out") from None
    except DatabaseError as exc:
        detail = "the search timed out" if "statement timeout" in str(exc) else "the database is unavailable"
        raise RetrievalFailed(detail) from exc
    answer.mark("retrieval")
    answer.sources = [hit.as_source(n) for n, hit in enumerate(retrieval.hits, start=1)]
    return retrieval, vector


async def _stream(answer: Answer, provider: LLMProvider, messages: list[ChatMessage], send: Send, call: Call) -> None:
    deltas = provider.stream(messages, answer.generation)
    limits = StreamLimits(provider.first_token_timeout, settings.LLM_IDLE_TIMEOUT, settings.LLM_TOTAL_TIMEOUT)
    answer_id = answer.asked.answer_id

    async def flush(text: str) -> None:
        await send(protocol.delta_frame(answer_id, text))

    async with DeltaCoalescer(flush, settings.STREAM_COALESCE_MS / 1000) as out:
        async for delta in guarded(deltas, limits):
            if not answer.parts:
                answer.mark("first_token")
                await call.succeeded()  # the LLM works: what follows is this answer's fate alone
            answer.parts.append(delta)
            answer.deltas += 1
            out.add(delta)


async def _persist(final: Message) -> None:
    """Write the final state: at once, once more on a fresh connection if the database dropped
    ours, then in the background with back-off, holding the answer in memory meanwhile."""
    for attempt in (1, 2):
        try:
            await db_async(do_finish_answer)(final)
            return
        except Exception:
            logger.warning("saving answer %s failed (attempt %s)", final.pk, attempt, exc_info=attempt == 2)
    task = asyncio.get_running_loop().create_task(_persist_later(final))
    _saving.add(task)
    task.add_done_callback(_saving.discard)


_saving: set[asyncio.Task] = set()  # strong references: a bare task may be garbage-collected
PERSIST_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30)  # then every 30 s until PERSIST_RETRY_FOR
PERSIST_RETRY_FOR = 15 * 60.0


async def _persist_later(final: Message) -> None:
    metrics.answer_unsaved()
    deadline = time.monotonic() + PERSIST_RETRY_FOR
    try:
        for attempt in itertools.count():
            await asyncio.sleep(PERSIST_RETRY_DELAYS[min(attempt, len(PERSIST_RETRY_DELAYS) - 1)])  # back-off
            try:
                await db_async(do_finish_answer)(final)
            except Exception:
                if time.monotonic() > deadline:
                    logger.error("answer %s (%s chars) could not be saved for %.0f s; giving up",
                                 final.pk, len(final.text), PERSIST_RETRY_FOR)  # fmt: skip
                    return
                continue
            logger.info("answer %s saved after %s retries", final.pk, attempt + 1)
            return
    finally:
        metrics.answer_saved_late()
