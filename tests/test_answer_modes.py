"""A person chooses the answer mode of a conversation: with its first question, or later on it, or
through the conversation API; the choice sticks to the conversation and only the owner changes it."""

import json

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from chat.models import Conversation, Message
from tests import test_browser
from tests.conftest import LiveServer
from tests.test_browser import ask, in_thread, last_answer, shot, signed_in_page

pytestmark = pytest.mark.django_db(transaction=True)
browser = test_browser.browser  # the Chromium fixture


@pytest.fixture
def openai_offered(use_openai, fake_groq):
    """Groq stays the default; the openai SDK, to the same fake server, is a second choice."""
    use_openai(f"{fake_groq.base_url}/openai/v1", default=False)


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def change(user, conversation_id: int, changes: dict):
    return signed_in(user).patch(
        f"/api/conversations/{conversation_id}/", data=json.dumps(changes), content_type="application/json"
    )


@pytest.mark.asyncio
async def test_it_answers_a_conversation_in_the_mode_asked_for_until_it_is_changed(openai_offered, people, chat_client):
    async with chat_client(people["alice"]) as client:
        first, _ = await client.answer("Where do zebras migrate?", provider="openai")
        conversation_id = (await database_sync_to_async(Conversation.objects.get)()).pk
        later, _ = await client.answer("How far do they go?", conversation_id=conversation_id)
        assert (first["provider"], later["provider"]) == ("openai", "openai")

        response = await database_sync_to_async(change)(people["alice"], conversation_id, {"provider": "groq"})
        assert response.status_code == 200 and response.json()["provider"] == "groq"
        after_patch, _ = await client.answer("And the stripes?", conversation_id=conversation_id)
        assert after_patch["provider"] == "groq"

        switched, _ = await client.answer("Once more?", conversation_id=conversation_id, provider="openai")
        assert switched["provider"] == "openai"
    detail = await database_sync_to_async(
        lambda: signed_in(people["alice"]).get(f"/api/conversations/{conversation_id}/")
    )()
    assert detail.json()["provider"] == "openai"


@pytest.mark.asyncio
async def test_it_uses_the_default_mode_when_none_was_chosen(openai_offered, people, chat_client):
    async with chat_client(people["alice"]) as client:
        finish, _ = await client.answer("Where do zebras migrate?")
    assert finish["provider"] == "groq"
    assert await database_sync_to_async(lambda: Conversation.objects.get().provider)() == ""


@pytest.mark.asyncio
async def test_it_refuses_a_mode_that_is_not_offered(openai_offered, people, chat_client):
    async with chat_client(people["alice"]) as client:
        client_id = await client.ask("Where do zebras migrate?", provider="gpt-9000")
        error = await client.receive()
        assert error["code"] == "invalid_field" and error["client_id"] == client_id
        assert "'provider' must be null or one of: groq, " in error["message"] and "openai" in error["message"]
        finish, _ = await client.answer("Where do zebras migrate?")  # the connection still works
    assert finish["status"] == "complete"
    assert await database_sync_to_async(Conversation.objects.count)() == 1


def test_it_lets_only_the_owner_change_a_conversation_mode(people, settings):
    conversation = Conversation.objects.create(user=people["alice"], title="Zebras")
    assert change(people["bob"], conversation.pk, {"provider": "local"}).status_code == 404
    refused = change(people["alice"], conversation.pk, {"provider": "gpt-9000"})
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_field"
    assert "groq" in refused.json()["error"]
    assert change(people["alice"], conversation.pk, {"provider": None}).json()["provider"] == ""
    conversation.refresh_from_db()
    assert conversation.provider == ""


def test_it_offers_a_choice_on_the_page_only_when_there_is_one(people, settings):
    page = signed_in(people["alice"]).get("/").content.decode()
    assert 'id="provider-choice"' in page and "Groq · fake-model" in page
    assert "Model: Groq · fake-model" in page

    settings.LLM_PROVIDERS = []
    page = signed_in(people["alice"]).get("/").content.decode()
    assert 'id="provider-choice"' not in page and "Model: Groq · fake-model" in page


@pytest.mark.slow
def test_it_lets_a_person_choose_the_mode_in_the_browser_at_phone_width(people, fake_groq, browser):
    server = LiveServer(fake_groq, OPENAI_BASE_URL=f"{fake_groq.base_url}/openai/v1", OPENAI_MODEL="fake-model")
    server.start()
    try:
        page = signed_in_page(browser, server.url, "alice", {"width": 390, "height": 800}, 30_000)
        choice = page.locator("#provider-choice")
        assert choice.input_value() == "groq"
        assert choice.locator("option").all_inner_texts()[:2] == ["Groq · fake-model", "fake-model (your model server)"]
        for control in (choice, page.locator("#send")):  # the long labels push nothing off the screen
            box = control.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, box

        choice.select_option("openai")  # a new conversation: sent with its first question
        ask(page, "Where do zebras migrate?")
        last_answer(page).locator(".body:not(.streaming)").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
        shot(page, "answer-mode-390")
        conversation = in_thread(Conversation.objects.get)
        assert conversation.provider == "openai"
        assert in_thread(Message.objects.get, role="assistant").provider == "openai"

        choice.select_option("extractive")  # an existing conversation: changed at once (PATCH)
        page.wait_for_function("() => document.getElementById('provider-choice').dataset.current === 'extractive'")
        assert in_thread(Conversation.objects.get).provider == "extractive"

        page.set_viewport_size({"width": 1280, "height": 800})
        page.reload()
        page.wait_for_function("() => document.getElementById('provider-choice').value === 'extractive'")
        assert page.locator(".sidebar").inner_text().count("Model: Groq · fake-model") == 1
        shot(page, "answer-mode-1280")
        page.click("#new-chat")
        assert choice.input_value() == "groq"
        page.context.close()
    finally:
        server.stop()
