"""The WebSocket protocol: validation of incoming frames and the one builder of each outgoing type.

One name per id: ``question_id`` is the stored question, ``answer_id`` the answer, in every frame,
in the conversation API and in the browser.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, Literal, NotRequired, TypedDict, TypeGuard

from django.conf import settings

from .errors import ChatError
from .llm import available_providers
from .models import Message
from .rendering import render_answer


class ProtocolError(ChatError):
    """A frame the server cannot act on; the message says what to send instead."""

    def __init__(self, code: str, user_message: str) -> None:
        super().__init__(user_message=user_message)
        self.code = code
        self.client_id: str | None = None  # echoed so the client can match the error to its question


# --- incoming frames ----------------------------------------------------------------------------
class AskFrame(TypedDict):
    type: Literal["ask"]
    conversation_id: int | None
    text: str
    client_id: str
    collection_ids: list[int] | None  # a new conversation searches only these (None: all readable)
    provider: str | None  # the answer mode the conversation uses from now on (None: unchanged)


class StopFrame(TypedDict):
    type: Literal["stop"]
    answer_id: int


class FollowFrame(TypedDict):
    """Send me this answer: what it has so far, then the rest as it comes (after a reconnect)."""

    type: Literal["follow"]
    answer_id: int


class PingFrame(TypedDict):
    type: Literal["ping"]


IncomingFrame = AskFrame | StopFrame | FollowFrame | PingFrame


def check_frame(text_data: str | None, bytes_data: bytes | None) -> IncomingFrame:
    """The parsed, validated frame; raises ``ProtocolError`` with a code for anything else."""
    if text_data is None:
        raise ProtocolError("invalid_frame", "Binary frames are not supported; send JSON text.")
    if len(text_data.encode(errors="surrogatepass")) > settings.MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"Frames are limited to {settings.MAX_FRAME_BYTES} bytes.")
    try:
        frame = json.loads(text_data)
    except ValueError:
        raise ProtocolError("invalid_json", "The frame is not valid JSON.") from None
    except RecursionError:  # "[" * 16000: the parser's own depth limit, not a server failure
        raise ProtocolError("invalid_json", "The frame nests too deeply to be a chat frame.") from None
    if not isinstance(frame, dict):
        raise ProtocolError("invalid_frame", "A frame must be a JSON object.")
    checker = _CHECKERS.get(str(frame.get("type")))
    if checker is None:
        raise ProtocolError("unknown_type", f"Unknown frame type {str(frame.get('type'))[:40]!r}.")
    try:
        return checker(frame)
    except ProtocolError as exc:
        exc.client_id = valid_uuid(frame.get("client_id"))
        raise


def valid_uuid(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def check_ask(frame: dict[str, Any]) -> AskFrame:
    text = frame.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError("missing_field", "'text' must be a non-empty string.")
    if len(text) > settings.MAX_QUESTION_CHARS:
        raise ProtocolError(
            "question_too_long",
            f"This question is {len(text)} characters long; questions are limited to "
            f"{settings.MAX_QUESTION_CHARS}. Shorten it, or upload the text as a document and ask about it.",
        )
    check_storable(text)
    conversation_id = frame.get("conversation_id")
    if conversation_id is not None and not _is_id(conversation_id):
        raise ProtocolError("invalid_field", "'conversation_id' must be a positive integer or null.")
    client_id = valid_uuid(frame.get("client_id"))
    if client_id is None:
        raise ProtocolError("missing_field", "'client_id' must be a UUID.")
    collection_ids = check_collection_ids(frame.get("collection_ids"))
    return {
        "type": "ask",
        "conversation_id": conversation_id,
        "text": text.strip(),
        "client_id": client_id,
        "collection_ids": collection_ids,
        "provider": check_provider(frame.get("provider")),
    }


def check_provider(value: Any) -> str | None:
    """An answer mode a person may choose (``chat.llm.available_providers()``), or None."""
    if value is None:
        return None
    choices = available_providers()
    if value not in choices:
        raise ProtocolError(
            "invalid_field", f"'provider' must be null or one of: {', '.join(choices)}; got {str(value)[:40]!r}."
        )
    return value


MAX_COLLECTION_IDS = 50


def check_collection_ids(value: Any) -> list[int] | None:
    """The collections a conversation searches: a list of at most MAX_COLLECTION_IDS ids (repeats
    dropped), or None for every readable one (also for an empty list)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_COLLECTION_IDS or not all(_is_id(v) for v in value):
        raise ProtocolError(
            "invalid_field",
            f"'collection_ids' must be null or a list of at most {MAX_COLLECTION_IDS} positive integer ids.",
        )
    return list(dict.fromkeys(value)) or None


def check_storable(text: str) -> None:
    """Text the database can store: no NUL character, no lone surrogate (JSON's ``\\ud800``)."""
    if "\x00" in text:
        raise ProtocolError("invalid_text", "The question contains a NUL character; remove it and resend.")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ProtocolError("invalid_text", "The question contains an invalid character (a lone surrogate).") from None


def check_stop(frame: dict[str, Any]) -> StopFrame:
    return {"type": "stop", "answer_id": _answer_id(frame)}


def check_follow(frame: dict[str, Any]) -> FollowFrame:
    return {"type": "follow", "answer_id": _answer_id(frame)}


def _answer_id(frame: dict[str, Any]) -> int:
    answer_id = frame.get("answer_id")
    if not _is_id(answer_id):
        raise ProtocolError("missing_field", "'answer_id' must be a positive integer.")
    return answer_id


def check_ping(frame: dict[str, Any]) -> PingFrame:
    return {"type": "ping"}


def _is_id(value: Any) -> TypeGuard[int]:
    """A row id: a JSON integer within the database's bigint (a larger one fails in the query)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


_CHECKERS: dict[str, Callable[[dict[str, Any]], IncomingFrame]] = {
    "ask": check_ask,
    "stop": check_stop,
    "follow": check_follow,
    "ping": check_ping,
}


# --- outgoing frames ----------------------------------------------------------------------------
class AnswerPayload(TypedDict):
    """An answer as the browser sees it: in the ``finish`` frame and in the conversation API."""

    answer_id: int
    status: str
    text: str
    html: str
    sources: list[dict[str, Any]]
    support: dict[str, Any]  # the grounding check, per sentence (chat/grounding.py)
    timings: dict[str, float]
    usage: dict[str, int | None]
    error_code: str
    provider: str
    model: str


class AckFrame(TypedDict):
    type: Literal["ack"]
    client_id: str
    question_id: int
    answer_id: int
    conversation_id: int
    duplicate: bool


class QueuedFrame(TypedDict):
    type: Literal["queued"]
    answer_id: int
    position: int


class StartFrame(TypedDict):
    type: Literal["start"]
    answer_id: int
    provider: str
    model: str


class StatusFrame(TypedDict):
    type: Literal["status"]
    answer_id: int
    stage: str


class ResumeFrame(TypedDict):
    """What follows is this answer from its beginning (a follower's replay): drop its text so far."""

    type: Literal["resume"]
    answer_id: int


class DeltaFrame(TypedDict):
    type: Literal["delta"]
    answer_id: int
    text: str


class FinishFrame(AnswerPayload):
    type: Literal["finish"]


class ErrorFrame(TypedDict):
    type: Literal["error"]
    code: str
    message: str
    retry_after: NotRequired[int]
    client_id: NotRequired[str]
    answer_id: NotRequired[int]


class PongFrame(TypedDict):
    type: Literal["pong"]


class DocumentFrame(TypedDict):
    """A step of one of the user's own documents (documents/progress.py); status ``deleted`` when
    it is gone."""

    type: Literal["document"]
    document_id: int
    title: str
    status: str
    chunks_done: int
    chunks_total: int
    error: str


OutgoingFrame = (
    AckFrame
    | QueuedFrame
    | StartFrame
    | StatusFrame
    | ResumeFrame
    | DeltaFrame
    | FinishFrame
    | ErrorFrame
    | PongFrame
    | DocumentFrame
)


def ack_frame(client_id: str, question_id: int, answer_id: int, conversation_id: int, duplicate: bool) -> AckFrame:
    return {
        "type": "ack",
        "client_id": client_id,
        "question_id": question_id,
        "answer_id": answer_id,
        "conversation_id": conversation_id,
        "duplicate": duplicate,
    }


def queued_frame(answer_id: int, position: int) -> QueuedFrame:
    return {"type": "queued", "answer_id": answer_id, "position": position}


def start_frame(answer_id: int, provider: str, model: str) -> StartFrame:
    return {"type": "start", "answer_id": answer_id, "provider": provider, "model": model}


def status_frame(answer_id: int, stage: str) -> StatusFrame:
    return {"type": "status", "answer_id": answer_id, "stage": stage}


def resume_frame(answer_id: int) -> ResumeFrame:
    return {"type": "resume", "answer_id": answer_id}


def delta_frame(answer_id: int, text: str) -> DeltaFrame:
    return {"type": "delta", "answer_id": answer_id, "text": text}


def answer_payload(answer: Message) -> AnswerPayload:
    """The one serialisation of an answer, stored or just finished."""
    return {
        "answer_id": answer.pk,
        "status": answer.status,
        "text": answer.text,
        "html": render_answer(answer.text, len(answer.sources), answer.support),
        "sources": answer.sources,
        "support": answer.support,
        "timings": answer.timings,
        "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
        "error_code": answer.error_code,
        "provider": answer.provider,
        "model": answer.model,
    }


def finish_frame(answer: Message) -> FinishFrame:
    return {"type": "finish", **answer_payload(answer)}


def error_frame(error: ChatError, *, client_id: str | None = None, answer_id: int | None = None) -> ErrorFrame:
    frame: ErrorFrame = {"type": "error", "code": error.code, "message": error.user_message}
    if error.retry_after is not None:
        frame["retry_after"] = error.retry_after
    if client_id:
        frame["client_id"] = client_id
    if answer_id is not None:
        frame["answer_id"] = answer_id
    return frame


def pong_frame() -> PongFrame:
    return {"type": "pong"}


def document_frame(event: dict[str, Any]) -> DocumentFrame:
    """The frame of a progress notice (its owner's id is for routing, not sent)."""
    return {
        "type": "document",
        "document_id": int(event["document_id"]),
        "title": str(event.get("title") or ""),
        "status": str(event["status"]),
        "chunks_done": int(event.get("chunks_done") or 0),
        "chunks_total": int(event.get("chunks_total") or 0),
        "error": str(event.get("error") or ""),
    }
