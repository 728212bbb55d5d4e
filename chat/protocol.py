"""The WebSocket protocol: validation of incoming frames and the one builder of each outgoing type."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal, TypedDict

from django.conf import settings


class ProtocolError(Exception):
    """A frame the server cannot act on; ``code`` and the message go back in an ``error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_id: str | None = None  # echoed so the client can match the error to its question


class AskFrame(TypedDict):
    type: Literal["ask"]
    conversation_id: int | None
    text: str
    client_id: str


class StopFrame(TypedDict):
    type: Literal["stop"]
    message_id: int


def check_frame(text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
    """The parsed, validated frame; raises ``ProtocolError`` with a code for anything else."""
    if text_data is None:
        raise ProtocolError("invalid_frame", "Binary frames are not supported; send JSON text.")
    if len(text_data.encode()) > settings.MAX_FRAME_BYTES:
        raise ProtocolError(
            "frame_too_large",
            f"Frames are limited to {settings.MAX_FRAME_BYTES} bytes.",
        )
    try:
        frame = json.loads(text_data)
    except ValueError:
        raise ProtocolError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise ProtocolError("invalid_frame", "A frame must be a JSON object.")
    checker = _CHECKERS.get(frame.get("type"))  # type: ignore[arg-type]
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
            "text_too_long",
            f"Questions are limited to {settings.MAX_QUESTION_CHARS} characters.",
        )
    conversation_id = frame.get("conversation_id")
    if conversation_id is not None and (not isinstance(conversation_id, int) or isinstance(conversation_id, bool)):
        raise ProtocolError("invalid_field", "'conversation_id' must be an integer or null.")
    client_id = valid_uuid(frame.get("client_id"))
    if client_id is None:
        raise ProtocolError("missing_field", "'client_id' must be a UUID.")
    return {
        "type": "ask",
        "conversation_id": conversation_id,
        "text": text.strip(),
        "client_id": client_id,
    }


def check_stop(frame: dict[str, Any]) -> StopFrame:
    message_id = frame.get("message_id")
    if not isinstance(message_id, int) or isinstance(message_id, bool):
        raise ProtocolError("missing_field", "'message_id' must be an integer.")
    return {"type": "stop", "message_id": message_id}


def check_ping(frame: dict[str, Any]) -> dict[str, Any]:
    return {"type": "ping"}


_CHECKERS = {"ask": check_ask, "stop": check_stop, "ping": check_ping}


# --- outgoing frames ----------------------------------------------------------------------------
def ack_frame(
    client_id: str,
    question_id: int,
    answer_id: int,
    conversation_id: int,
    duplicate: bool,
) -> dict:
    return {
        "type": "ack",
        "client_id": client_id,
        "message_id": question_id,
        "answer_id": answer_id,
        "conversation_id": conversation_id,
        "duplicate": duplicate,
    }


def queued_frame(answer_id: int, position: int) -> dict:
    return {"type": "queued", "message_id": answer_id, "position": position}


def start_frame(answer_id: int, provider: str, model: str) -> dict:
    return {
        "type": "start",
        "message_id": answer_id,
        "provider": provider,
        "model": model,
    }


def status_frame(answer_id: int, stage: str) -> dict:
    return {"type": "status", "message_id": answer_id, "stage": stage}


def delta_frame(answer_id: int, text: str) -> dict:
    return {"type": "delta", "message_id": answer_id, "text": text}


def finish_frame(
    answer_id: int,
    status: str,
    text: str,
    html: str,
    sources: list,
    timings: dict,
    usage: dict,
    error_code: str = "",
) -> dict:
    return {
        "type": "finish",
        "message_id": answer_id,
        "status": status,
        "text": text,
        "html": html,
        "sources": sources,
        "timings": timings,
        "usage": usage,
        "error_code": error_code,
    }


def error_frame(
    code: str,
    message: str,
    *,
    client_id: str | None = None,
    message_id: int | None = None,
    retry_after: int | None = None,
) -> dict:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if retry_after is not None:
        frame["retry_after"] = retry_after
    if client_id:
        frame["client_id"] = client_id
    if message_id is not None:
        frame["message_id"] = message_id
    return frame
