"""Bad frames get an error frame with a code, and the same connection keeps working."""

import json
import logging
import uuid

import pytest
from django.conf import settings

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

BAD_FRAMES = [
    ("{not json", "invalid_json"),
    (json.dumps([1, 2]), "invalid_frame"),
    (json.dumps({"type": "dance"}), "unknown_type"),
    (json.dumps({"no": "type"}), "unknown_type"),
    (json.dumps({"type": "ask", "client_id": str(uuid.uuid4())}), "missing_field"),
    (
        json.dumps({"type": "ask", "text": "hi", "client_id": "not-a-uuid"}),
        "missing_field",
    ),
    (
        json.dumps({"type": "ask", "text": "   ", "client_id": str(uuid.uuid4())}),
        "missing_field",
    ),
    (
        json.dumps(
            {
                "type": "ask",
                "text": "hi",
                "conversation_id": "7",
                "client_id": str(uuid.uuid4()),
            }
        ),
        "invalid_field",
    ),
    (json.dumps({"type": "stop"}), "missing_field"),
    # Hostile frames: the parser's recursion limit, characters the database cannot store, ids
    # beyond its bigint; each is a clear error, not an internal_error with a logged traceback.
    ("[" * 16000, "invalid_json"),
    ('{"a":' * 2500 + "1" + "}" * 2500, "invalid_json"),
    (json.dumps({"type": "ask", "text": "zebras\u0000?", "client_id": str(uuid.uuid4())}), "invalid_text"),
    ('{"type": "ask", "text": "zebras \\ud800?", "client_id": "' + str(uuid.uuid4()) + '"}', "invalid_text"),
    (
        json.dumps({"type": "ask", "text": "hi", "conversation_id": 2**70, "client_id": str(uuid.uuid4())}),
        "invalid_field",
    ),
    (json.dumps({"type": "stop", "answer_id": 2**63}), "missing_field"),
    (json.dumps({"type": "stop", "answer_id": -1}), "missing_field"),
    (json.dumps({"type": "stop", "answer_id": 999999}), "not_found"),
]


@pytest.mark.parametrize("raw, code", BAD_FRAMES)
async def test_it_answers_a_bad_frame_with_an_error_and_keeps_the_connection(people, chat_client, raw, code, caplog):
    async with chat_client(people["alice"]) as client:
        await client.send(raw)
        error = await client.receive()
        assert error == {
            "type": "error",
            "code": code,
            "message": error["message"],
            **_client_id(raw),
        }
        assert error["message"] and "Traceback" not in error["message"]
        finish, _ = await client.answer("Where do zebras migrate?")
        assert finish["status"] == "complete"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a bad frame is not a server error"


async def test_it_refuses_a_question_over_the_length_limit(people, chat_client):
    async with chat_client(people["alice"]) as client:
        await client.ask("z" * (settings.MAX_QUESTION_CHARS + 1))
        error = await client.receive()
        assert error["code"] in {"question_too_long", "frame_too_large"}
        finish, _ = await client.answer("Where do zebras migrate?")
        assert finish["status"] == "complete"


async def test_it_refuses_an_oversized_frame(people, chat_client):
    async with chat_client(people["alice"]) as client:
        await client.send(json.dumps({"type": "ping", "pad": "x" * settings.MAX_FRAME_BYTES}))
        assert (await client.receive())["code"] == "frame_too_large"
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}


async def test_it_rejects_binary_frames(people, chat_client):
    async with chat_client(people["alice"]) as client:
        await client.communicator.send_to(bytes_data=b"\x00\x01")
        assert (await client.receive())["code"] == "invalid_frame"


def _client_id(raw: str) -> dict:
    try:
        frame = json.loads(raw)
        cid = frame.get("client_id") if isinstance(frame, dict) else None
        uuid.UUID(str(cid))
        return {"client_id": cid}
    except (ValueError, AttributeError, RecursionError):
        return {}
