"""Abuse of the chat socket: floods of frames, many sockets, a session that ended, one user's
questions racing for the per-user limit. Each costs the abuser, not the server or other users."""

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chat.presence import STALE_SECONDS
from tests.conftest import communicator_for, session_cookie

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def closed_with(communicator) -> int:
    """The close code the server sent (after any frames still queued)."""
    while True:
        output = await communicator.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            return output["code"]


async def test_it_closes_a_socket_that_floods_frames_and_keeps_others_chatting(people, chat_client, settings):
    settings.WS_FRAME_BURST = 5
    settings.WS_FRAMES_PER_SECOND = 1
    async with chat_client(people["bob"]) as bystander, chat_client(people["alice"]) as flooder:
        for _ in range(20):
            await flooder.send({"type": "ping"})
        replies = [await flooder.receive() for _ in range(6)]
        assert replies[:5] == [{"type": "pong"}] * 5
        assert replies[5]["type"] == "error" and replies[5]["code"] == "too_many_frames"
        assert await closed_with(flooder.communicator) == 1008
        assert await flooder.communicator.receive_nothing(timeout=0.3)  # the other 14 frames cost nothing

        finish, _ = await bystander.answer("When is the pelican launch?")
        assert finish["status"] == "complete"


async def test_it_refills_the_frame_budget_over_time(people, chat_client, settings):
    settings.WS_FRAME_BURST = 3
    settings.WS_FRAMES_PER_SECOND = 20
    async with chat_client(people["alice"]) as client:
        for _ in range(12):  # 4x the burst, at a pace the budget refills
            await client.send({"type": "ping"})
            assert await client.receive() == {"type": "pong"}
            await asyncio.sleep(0.06)  # slower than 20 frames per second


async def test_it_caps_the_sockets_one_user_holds(people, settings):
    settings.WS_MAX_SOCKETS_PER_USER = 2
    held = [await communicator_for(people["alice"]) for _ in range(2)]
    for communicator in held:
        assert (await communicator.connect(timeout=30))[0]

    third = await communicator_for(people["alice"])
    await third.connect(timeout=30)
    refused = await third.receive_json_from(timeout=10)
    assert refused["code"] == "too_many_sockets" and "close a tab" in refused["message"]
    assert await closed_with(third) == 1008

    other = await communicator_for(people["bob"])  # a cap per user, not for everyone
    assert (await other.connect(timeout=30))[0]
    await other.disconnect()

    await held[0].disconnect()  # a closed tab gives its place back
    again = await communicator_for(people["alice"])
    assert (await again.connect(timeout=30))[0]
    await again.send_json_to({"type": "ping"})
    assert await again.receive_json_from(timeout=10) == {"type": "pong"}
    for communicator in (held[1], again):
        await communicator.disconnect()


async def test_it_counts_the_sockets_of_every_process_through_redis(people, settings, redis_server):
    settings.REDIS_URL = redis_server["url"]
    settings.WS_MAX_SOCKETS_PER_USER = 2
    key = f"docchat:sockets:{people['alice'].pk}"
    # Another server process holds one socket of alice's; a process that died left one that has
    # not been refreshed since.
    now = time.time()
    redis_server["client"].zadd(key, {"other-process:1": now, "dead-process:1": now - STALE_SECONDS - 5})

    mine = await communicator_for(people["alice"])
    assert (await mine.connect(timeout=30))[0]
    await mine.send_json_to({"type": "ping"})
    assert await mine.receive_json_from(timeout=10) == {"type": "pong"}

    over = await communicator_for(people["alice"])
    await over.connect(timeout=30)
    assert (await over.receive_json_from(timeout=10))["code"] == "too_many_sockets"
    assert await closed_with(over) == 1008

    members = {m.decode() for m in redis_server["client"].zrange(key, 0, -1)}
    assert "dead-process:1" not in members and "other-process:1" in members and len(members) == 2
    await mine.disconnect()
    assert {m.decode() for m in redis_server["client"].zrange(key, 0, -1)} == {"other-process:1"}


def sign_out(cookie: bytes) -> None:
    """The browser's "Sign out" button: POST /logout/ with the session cookie."""
    name, value = cookie.decode().split("=", 1)
    client = Client()
    client.cookies[name] = value
    assert client.post("/logout/").status_code == 302


async def test_it_closes_the_sockets_of_a_session_that_signs_out(people, settings):
    from config.asgi import application

    alice = people["alice"]
    cookie = await database_sync_to_async(session_cookie)(alice)
    headers = [(b"origin", b"http://127.0.0.1"), (b"cookie", cookie)]
    tabs = [WebsocketCommunicator(application, "/ws/chat/", headers=headers) for _ in range(2)]
    for tab in tabs:
        assert (await tab.connect(timeout=30))[0]
    elsewhere = await communicator_for(alice)  # alice on another device: another session
    assert (await elsewhere.connect(timeout=30))[0]

    await database_sync_to_async(sign_out)(cookie)
    for tab in tabs:
        frame = await tab.receive_json_from(timeout=10)
        assert frame["code"] == "signed_out"
        assert await closed_with(tab) == 4401

    await elsewhere.send_json_to({"type": "ping"})
    assert await elsewhere.receive_json_from(timeout=10) == {"type": "pong"}
    await elsewhere.disconnect()


@pytest.mark.parametrize("change", ["password", "deactivated", "session_deleted"])
async def test_it_refuses_a_question_once_the_session_no_longer_signs_the_user_in(
    people, chat_client, change, settings
):
    settings.SESSION_RECHECK_SECONDS = 0  # every question re-reads the session
    alice = people["alice"]

    def end_the_session() -> None:
        from django.contrib.sessions.models import Session

        if change == "password":
            alice.set_password("a-new-password-456")
            alice.save()
        elif change == "deactivated":
            alice.is_active = False
            alice.save()
        else:
            Session.objects.all().delete()  # the only session is this socket's

    async with chat_client(alice) as client:
        finish, _ = await client.answer("Where do zebras migrate?")
        assert finish["status"] == "complete"
        await database_sync_to_async(end_the_session)()

        client_id = await client.ask("Where do zebras migrate?")
        error = await client.receive()
        assert error["code"] == "signed_out" and error["client_id"] == client_id
        assert await closed_with(client.communicator) == 4401

    from chat.models import Message

    count = await database_sync_to_async(Message.objects.filter(role="user").count)()
    assert count == 1  # the refused question was not recorded


@pytest.mark.parametrize("shared", [False, True], ids=["one process", "redis"])
async def test_it_holds_one_users_simultaneous_questions_to_the_per_user_limit(
    people, chat_client, fake_groq, settings, redis_server, shared
):
    if shared:
        settings.REDIS_URL = redis_server["url"]
    settings.MAX_GENERATIONS_PER_USER = 2
    slow = "[[fake tokens=40 delay=0.05]] Where do zebras migrate?"
    clients = [chat_client(people["alice"]) for _ in range(5)]
    for client in clients:
        await client.__aenter__()
    try:
        await asyncio.gather(*(client.ask(slow) for client in clients))  # five tabs, one moment
        first = await asyncio.gather(*(client.receive() for client in clients))
        refused = [f for f in first if f["type"] == "error"]
        assert len(refused) == 3 and {f["code"] for f in refused} == {"too_many_generations"}
        answering = [c for c, f in zip(clients, first, strict=True) if f["type"] == "ack"]
        assert len(answering) == 2
        finishes = await asyncio.gather(*(client.until("finish") for client in answering))
        assert [f["status"] for f, _ in finishes] == ["complete", "complete"]
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)


async def test_it_rereads_the_session_only_when_its_last_check_is_older_than_the_recheck_interval(
    people, chat_client, settings
):
    settings.SESSION_RECHECK_SECONDS = 3600
    alice = people["alice"]

    def change_password() -> None:
        alice.set_password("a-new-password-456")
        alice.save()

    async with chat_client(alice) as client:
        await database_sync_to_async(change_password)()
        finish, _ = await client.answer("Where do zebras migrate?")  # checked at connect, an hour's grace
        assert finish["status"] == "complete"
        settings.SESSION_RECHECK_SECONDS = 0
        await client.ask("Where do zebras migrate?")
        assert (await client.receive())["code"] == "signed_out"
        assert await closed_with(client.communicator) == 4401
