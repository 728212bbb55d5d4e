"""An answer survives its socket: a disconnect only stops the listening (only ``stop`` cancels),
the user coming back (same tab, another tab, another process behind the load balancer) gets the
answer so far and then the rest live, and a server restart leaves it ``interrupted`` with its
partial text, to be asked again."""

import asyncio
import json
import time
import uuid

import pytest
import websockets
from channels.db import database_sync_to_async

from chat.actions import do_finish_answer
from chat.models import Message
from monitoring import metrics
from tests.conftest import LiveServer, session_cookie, streamed_text

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]
LONG = "[[fake tokens=250 delay=0.03]] Where do zebras migrate?"  # ~7.5 s of tokens


async def wait_for(condition, timeout=15.0):
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)  # polling a counter of the fake server or of the process


def streamed_after_the_replay(shown: list[dict]) -> bool:
    """Whether deltas came live after the replay's one delta (the text so far)."""
    return len([f for f in shown if f["type"] == "delta"]) >= 2


def after_resume(frames: list[dict]) -> list[dict]:
    """The frames from the last ``resume`` on: what a client shows after it reset the answer."""
    starts = [i for i, frame in enumerate(frames) if frame["type"] == "resume"]
    assert starts, f"no resume frame in {[f['type'] for f in frames]}"
    return frames[starts[-1] :]


async def test_it_finishes_an_answer_after_a_disconnect_and_replays_it_to_the_user_coming_back(
    people, chat_client, fake_groq
):
    async with chat_client(people["alice"]) as tab:
        await tab.ask(LONG)
        ack = await tab.receive()
        await tab.until("delta")
    # the socket is gone after the first delta; 2 s later the user is back
    await asyncio.sleep(2)  # the time away is the scenario itself
    assert fake_groq.fake.stats.disconnected == 0  # the model was not cut off
    async with chat_client(people["alice"]) as back:
        await back.send({"type": "follow", "answer_id": ack["answer_id"]})
        finish, frames = await back.until("finish")
        # an answer asked again normally, start to end, for comparison
        uninterrupted, _ = await back.answer(LONG)

    shown = after_resume(frames)
    assert finish["status"] == "complete" and finish["answer_id"] == ack["answer_id"]
    assert streamed_text(shown) == finish["text"] == uninterrupted["text"]
    assert streamed_after_the_replay(shown)
    assert fake_groq.fake.stats.requests == 2  # this answer's call, and the comparison's
    saved = await database_sync_to_async(Message.objects.get)(pk=ack["answer_id"])
    assert saved.status == "complete" and saved.text == finish["text"]


async def test_a_resent_question_gets_its_answer_so_far_instead_of_a_second_one(people, chat_client, fake_groq):
    async with chat_client(people["alice"]) as tab:
        client_id = await tab.ask(LONG)
        ack = await tab.receive()
        await tab.until("delta")
    async with chat_client(people["alice"]) as back:  # the browser resends what it had not seen acked
        await back.ask(LONG, client_id=client_id)
        again = await back.receive()
        finish, frames = await back.until("finish")
    assert again["duplicate"] and again["answer_id"] == ack["answer_id"]
    assert streamed_text(after_resume(frames)) == finish["text"] and finish["status"] == "complete"
    assert fake_groq.fake.stats.requests == 1


async def test_another_tab_follows_the_answer_and_its_stop_ends_it_for_both(people, chat_client, fake_groq):
    async with chat_client(people["alice"]) as first, chat_client(people["alice"]) as second:
        await first.ask("[[fake tokens=400 delay=0.02]] Where do zebras migrate?")
        ack = await first.receive()
        await first.until("delta")
        await second.send({"type": "follow", "answer_id": ack["answer_id"]})
        _, followed = await second.until("delta")
        await second.send({"type": "stop", "answer_id": ack["answer_id"]})
        (stopped, _), (same, rest) = await asyncio.gather(first.until("finish"), second.until("finish"))
    assert stopped["status"] == same["status"] == "stopped"
    assert streamed_text(after_resume(followed + rest)) == same["text"] == stopped["text"]
    await wait_for(lambda: fake_groq.fake.stats.disconnected == 1)  # the stop reached the model's stream


async def test_following_an_answer_running_nowhere_here_waits_for_its_final_state(people, chat_client):
    """Pending in the database but not written by this process (a process that is going down, or
    one we cannot reach): the follower gets its final state once the database has it."""
    from chat.actions import do_record_question

    asked = await database_sync_to_async(do_record_question)(people["alice"], None, "Zebras?", str(uuid.uuid4()))
    async with chat_client(people["alice"]) as tab:
        await tab.send({"type": "follow", "answer_id": asked.answer_id})
        assert (await tab.receive())["type"] == "resume"
        await database_sync_to_async(Message.objects.filter(pk=asked.answer_id).update)(
            status="interrupted", text="Zebras migr", error_code="server_restart"
        )
        finish = await tab.receive(timeout=10)
    assert finish["type"] == "finish" and finish["status"] == "interrupted" and finish["text"] == "Zebras migr"


async def test_it_sends_the_finish_frame_when_stop_comes_twice_while_the_answer_is_saved(
    people, chat_client, monkeypatch
):
    """A double click on Stop, or a stop from two tabs, lands while the final state is written."""
    from chat import answering

    def slow_write(answer):  # a database that takes its time
        time.sleep(0.4)
        do_finish_answer(answer)

    monkeypatch.setattr(answering, "do_finish_answer", slow_write)
    async with chat_client(people["alice"]) as tab:
        await tab.ask("[[fake tokens=400 delay=0.02]] Where do zebras migrate?")
        ack, _ = await tab.until("ack")
        await tab.until("delta")
        await tab.send({"type": "stop", "answer_id": ack["answer_id"]})
        await asyncio.sleep(0.15)  # the first stop's final write is under way
        await tab.send({"type": "stop", "answer_id": ack["answer_id"]})
        finish, _ = await tab.until("finish", timeout=10)
    assert finish["status"] == "stopped"


async def test_an_interrupted_answer_stays_out_of_the_models_memory(people):
    from chat.actions import do_record_question

    record = database_sync_to_async(do_record_question)
    first = await record(people["alice"], None, "Where do zebras migrate?", str(uuid.uuid4()))
    await database_sync_to_async(Message.objects.filter(pk=first.answer_id).update)(
        status="interrupted", text="Zebras migr"
    )
    again = await record(people["alice"], first.conversation_id, "Where do zebras migrate?", str(uuid.uuid4()))
    assert [(turn.role, turn.text) for turn in again.history] == [("user", "Where do zebras migrate?")]


async def test_bob_can_neither_follow_nor_stop_alices_answer(people, chat_client):
    async with chat_client(people["alice"]) as alice, chat_client(people["bob"]) as bob:
        await alice.ask("[[fake tokens=200 delay=0.02]] Where do zebras migrate?")
        ack = await alice.receive()
        for kind in ("follow", "stop"):
            await bob.send({"type": kind, "answer_id": ack["answer_id"]})
            error = await bob.receive()
            assert error["type"] == "error" and error["code"] == "not_found"
        finish, frames = await alice.until("finish")
    assert finish["status"] == "complete"
    assert not [f for f in frames if f["type"] == "resume"]  # nobody else was replayed to


async def test_it_caps_the_answers_a_user_leaves_running_and_shows_them_in_monitoring(
    people, chat_client, fake_groq, settings
):
    settings.MAX_DETACHED_ANSWERS_PER_USER, settings.DETACHED_ANSWER_GRACE_SECONDS = 1, 0.5
    slow = "[[fake tokens=150 delay=0.02]] Where do zebras migrate?"
    before = metrics.detached_answers()
    async with chat_client(people["alice"]) as tab:
        acks = []
        for _ in range(2):
            await tab.ask(slow)
            acks.append((await tab.until("ack"))[0])
        await tab.until("delta")
    assert metrics.detached_answers() == before + 2  # both run on, detached, for the grace period
    await wait_for(lambda: metrics.detached_answers() == before + 1)  # then one left running, one stopped
    await wait_for(lambda: fake_groq.fake.stats.completed == 1)
    await wait_for(lambda: metrics.detached_answers() == before)
    answers = await database_sync_to_async(
        lambda: {m.pk: m for m in Message.objects.filter(pk__in=[a["answer_id"] for a in acks])}
    )()
    statuses = sorted((m.status, m.error_code) for m in answers.values())
    assert statuses == [("complete", ""), ("stopped", "detached_limit")]


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http", "ws") + "/ws/chat/"


async def next_frame(ws, kind: str) -> tuple[dict, list[dict]]:
    frames: list[dict] = []
    async with asyncio.timeout(60):
        while True:
            frames.append(json.loads(await ws.recv()))
            if frames[-1]["type"] == kind:
                return frames[-1], frames


async def signed_in_headers(server: LiveServer, user) -> dict[str, str]:
    """What a signed-in browser on ``server``'s page sends with its WebSocket handshake."""
    cookie = (await database_sync_to_async(session_cookie)(user)).decode()
    return {"Cookie": cookie, "Origin": server.url}


def ask_frame(text: str, conversation_id: int | None = None) -> str:
    return json.dumps({"type": "ask", "conversation_id": conversation_id, "client_id": str(uuid.uuid4()), "text": text})


@pytest.mark.slow
async def test_an_answer_started_on_one_server_process_streams_on_from_another(people, fake_groq, redis_server):
    shared = {"REDIS_URL": redis_server["url"], "WEB_CONCURRENCY": 1}
    a, b = await asyncio.gather(*(asyncio.to_thread(LiveServer(fake_groq, **shared).start) for _ in range(2)))
    headers = await signed_in_headers(a, people["alice"])
    try:
        async with websockets.connect(ws_url(a), additional_headers=headers) as on_a:
            await on_a.send(ask_frame(LONG))
            ack, _ = await next_frame(on_a, "ack")
            await next_frame(on_a, "delta")
        # the load balancer sends the reconnecting client to B
        async with websockets.connect(ws_url(b), additional_headers=headers | {"Origin": b.url}) as on_b:
            await on_b.send(json.dumps({"type": "follow", "answer_id": ack["answer_id"]}))
            finish, frames = await next_frame(on_b, "finish")
            await on_b.send(ask_frame(LONG))  # the same question, start to end, for comparison
            uninterrupted, _ = await next_frame(on_b, "finish")

            # a stop sent to B reaches the answer A is writing for another socket
            async with websockets.connect(ws_url(a), additional_headers=headers) as on_a:
                await on_a.send(ask_frame("[[fake tokens=400 delay=0.02]] Tell me about stripes"))
                long_ack, _ = await next_frame(on_a, "ack")
                await next_frame(on_a, "delta")
                await on_b.send(json.dumps({"type": "stop", "answer_id": long_ack["answer_id"]}))
                stopped, _ = await next_frame(on_a, "finish")
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
    shown = after_resume(frames)
    assert finish["status"] == "complete" and streamed_text(shown) == finish["text"]
    assert streamed_after_the_replay(shown)  # streamed live from B, not only replayed
    assert finish["text"] == uninterrupted["text"]
    assert stopped["status"] == "stopped"
    assert fake_groq.fake.stats.requests == 3


@pytest.mark.slow
async def test_a_server_restart_leaves_the_answer_interrupted_and_asking_again_works(people, fake_groq):
    server = await asyncio.to_thread(LiveServer(fake_groq).start)
    headers = await signed_in_headers(server, people["alice"])
    question = "[[fake tokens=600 delay=0.05]] Where do zebras migrate?"
    try:
        async with websockets.connect(ws_url(server), additional_headers=headers) as ws:
            await ws.send(ask_frame(question))
            ack, _ = await next_frame(ws, "ack")
            await next_frame(ws, "delta")
            await asyncio.to_thread(server.stop)
        interrupted = await database_sync_to_async(Message.objects.get)(pk=ack["answer_id"])
        assert interrupted.status == "interrupted" and interrupted.error_code == "server_restart"
        assert interrupted.text.startswith("You asked")  # the partial text is kept

        await asyncio.to_thread(server.start)
        async with websockets.connect(ws_url(server), additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "follow", "answer_id": ack["answer_id"]}))
            shown, _ = await next_frame(ws, "finish")
            await ws.send(ask_frame("Where do zebras migrate?", ack["conversation_id"]))  # Retry
            retried, _ = await next_frame(ws, "finish")
    finally:
        await asyncio.to_thread(server.stop)
    assert shown["status"] == "interrupted" and shown["text"] == interrupted.text
    assert retried["status"] == "complete" and retried["answer_id"] != ack["answer_id"]
