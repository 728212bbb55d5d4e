"""Memory, idempotent resends, rate limits, safe rendering, conversation management."""

import json
import uuid

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from chat.models import Conversation, Message
from chat.rendering import render_answer
from tests.conftest import make_collection

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.mark.asyncio
async def test_it_sends_the_conversation_so_far_with_a_follow_up(people, chat_client, fake_groq):
    async with chat_client(people["alice"]) as client:
        first, frames = await client.answer("Where do zebras migrate?")
        conversation = frames[0]["conversation_id"]
        await client.answer("And how far is that?", conversation_id=conversation)

    prompt = fake_groq.fake.stats.prompts[-1]
    roles = [message["role"] for message in prompt]
    assert roles == ["system", "user", "assistant", "user"]
    assert prompt[1]["content"] == "Where do zebras migrate?"
    assert prompt[2]["content"] == first["text"]
    # retrieval used the earlier question too: the zebra document is a source of the follow-up
    assert "Question: And how far is that?" in prompt[3]["content"]
    assert "Serengeti" in prompt[3]["content"]


@pytest.mark.asyncio
async def test_it_records_a_resent_question_once_and_replays_its_answer(people, chat_client):
    client_id = str(uuid.uuid4())
    async with chat_client(people["alice"]) as client:
        await client.ask("Where do zebras migrate?", client_id=client_id)
        finish, _ = await client.until("finish")
    async with chat_client(people["alice"]) as again:  # reconnected, resends the same frame
        await again.ask("Where do zebras migrate?", client_id=client_id)
        ack = await again.receive()
        replay = await again.receive()
    assert ack["duplicate"] is True and ack["answer_id"] == finish["answer_id"]
    assert replay["type"] == "finish" and replay["text"] == finish["text"]
    assert await database_sync_to_async(Message.objects.filter(client_id=client_id).count)() == 1
    assert await database_sync_to_async(Message.objects.count)() == 2


def test_it_finds_a_resent_question_through_its_own_index(people):
    """The lookup that runs before every question reads one index entry, not every message's."""
    from django.db import connection

    from chat.actions import _FIND_BY_CLIENT_ID_SQL
    from chat.models import Conversation, Message

    # A user with a long history: on near-empty tables the planner's choice of index is a coin toss.
    conversation = Conversation.objects.create(user=people["alice"])
    Message.objects.bulk_create(
        Message(conversation=conversation, role="user", text=f"question {i}", client_id=uuid.uuid4())
        for i in range(3000)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE chat_message")
        cursor.execute("ANALYZE chat_conversation")
        cursor.execute("EXPLAIN (FORMAT JSON) " + _FIND_BY_CLIENT_ID_SQL, [people["alice"].pk, "user", uuid.uuid4()])
        plan = json.dumps(cursor.fetchone()[0])
    assert '"Index Name": "message_client_id"' in plan


@pytest.mark.asyncio
async def test_it_shows_an_answer_the_same_way_live_and_reloaded(people, chat_client, fake_groq):
    async with chat_client(people["alice"]) as client:
        finish, frames = await client.answer("Where do zebras migrate?")
    ack = frames[0]
    assert ack["type"] == "ack" and "message_id" not in ack
    assert all(frame["answer_id"] == ack["answer_id"] for frame in frames[1:])  # one name, one id

    http = AsyncClient()
    await http.aforce_login(people["alice"])
    reloaded = (await http.get(f"/api/conversations/{ack['conversation_id']}/")).json()["messages"]
    question, answer = reloaded
    assert question == {"role": "user", "question_id": ack["question_id"], "text": "Where do zebras migrate?"}
    assert answer == {"role": "assistant", **{key: value for key, value in finish.items() if key != "type"}}
    assert answer["sources"] and "<p>" in answer["html"]


@pytest.mark.asyncio
async def test_it_rate_limits_the_31st_question_in_a_minute(people, chat_client, settings):
    settings.RATE_LIMIT_PER_MINUTE = 30
    async with chat_client(people["charlie"]) as client:
        for i in range(30):
            await client.ask(f"Coffee machine question {i}?")
            await client.until("finish")
        await client.ask("One too many?")
        error = await client.receive()
    assert error["code"] == "rate_limited"
    assert 1 <= error["retry_after"] <= 60
    assert "30 questions per minute" in error["message"]
    assert await database_sync_to_async(Message.objects.filter(role="user").count)() == 30


@pytest.mark.asyncio
async def test_it_limits_answers_in_progress_per_user(people, chat_client, settings):
    settings.MAX_GENERATIONS_PER_USER = 2
    async with chat_client(people["alice"]) as client:
        for _ in range(2):
            await client.ask("[[fake tokens=200 delay=0.02]] Where do zebras migrate?")
            await client.until("ack")
        await client.ask("A third at once?")
        error, _ = await client.until("error")
    assert error["code"] == "too_many_generations"


@pytest.mark.asyncio
async def test_it_neutralises_script_in_documents_and_model_output(people, chat_client, tmp_path):
    await database_sync_to_async(make_collection)(
        "evil",
        people["alice"],
        {"evil.md": "# Evil\n\nZebra <script>alert('doc')</script> stripes."},
        tmp_path,
    )
    async with chat_client(people["alice"]) as client:
        finish, _ = await client.answer("Zebra stripes <script>alert('x')</script> [click](javascript:alert(1))")
    html = finish["html"]
    assert "<script" not in html
    assert 'href="javascript' not in html  # the link was not made; its text stays inert
    assert "&lt;script&gt;" in html  # shown as text, not run
    # the document's script reached the prompt only as source text, never as markup in the answer
    assert any("<script>" in source["snippet"] for source in finish["sources"])


def test_rendering_keeps_markdown_and_links_only_existing_citations():
    html = render_answer("**Bold** claim [1] and [7].\n\n<img src=x onerror=alert(1)>", source_count=2)
    assert "<strong>Bold</strong>" in html
    assert 'href="#source-1"' in html and "#source-7" not in html
    assert "<img" not in html and "&lt;img" in html  # raw HTML is shown as text, never as a tag


def test_it_renames_deletes_and_searches_own_conversations_only(people, client):
    alice_chat = Conversation.objects.create(user=people["alice"], title="Zebra facts")
    bob_chat = Conversation.objects.create(user=people["bob"], title="Launch plans")
    client.force_login(people["alice"])

    renamed = client.patch(
        f"/api/conversations/{alice_chat.pk}/",
        json.dumps({"title": "  Zebras  "}),
        "application/json",
    )
    assert renamed.json()["title"] == "Zebras"
    assert client.get("/api/conversations/?q=zeb").json()["conversations"][0]["id"] == alice_chat.pk
    assert client.get("/api/conversations/?q=launch").json()["conversations"] == []
    assert client.get(f"/api/conversations/{bob_chat.pk}/").status_code == 404
    assert client.delete(f"/api/conversations/{bob_chat.pk}/").status_code == 404
    assert client.patch(f"/api/conversations/{alice_chat.pk}/", "nope", "application/json").status_code == 400
    assert client.delete(f"/api/conversations/{alice_chat.pk}/").status_code == 204
    assert list(Conversation.objects.values_list("title", flat=True)) == ["Launch plans"]


def test_the_chat_page_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response.url.startswith("/login/")


def test_it_gives_abandoned_answers_a_final_status(people):
    from datetime import timedelta

    from django.utils import timezone

    from chat.actions import do_interrupt_abandoned_answers, do_record_question

    asked = do_record_question(people["alice"], None, "What happened?", str(uuid.uuid4()))
    fresh = do_record_question(people["alice"], None, "Still going?", str(uuid.uuid4()))
    Message.objects.filter(pk=asked.answer_id).update(updated_at=timezone.now() - timedelta(hours=1))
    assert do_interrupt_abandoned_answers() == 1
    swept = Message.objects.get(pk=asked.answer_id)
    assert swept.status == "interrupted" and swept.error_code == "abandoned"
    assert Message.objects.get(pk=fresh.answer_id).status == "pending"  # may still be answered
