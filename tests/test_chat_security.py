"""Login required, Origin checked, and nobody reads another user's documents."""

import asyncio

import pytest

from documents.embedding import encode
from documents.search import search, text_search, vector_search
from tests.conftest import communicator_for

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.mark.asyncio
async def test_it_rejects_an_unauthenticated_websocket(db):
    communicator = await communicator_for(None)
    connected, code = await communicator.connect()
    assert not connected
    assert code == 4401


@pytest.mark.asyncio
async def test_it_rejects_a_websocket_from_a_foreign_origin(people):
    communicator = await communicator_for(people["alice"], origin=(b"origin", b"http://evil.example"))
    connected, _ = await communicator.connect()
    assert not connected


@pytest.mark.asyncio
async def test_it_rejects_a_websocket_without_origin(people):
    communicator = await communicator_for(people["alice"], origin=None)
    connected, _ = await communicator.connect()
    assert not connected


def test_it_never_retrieves_bobs_private_chunks_for_alice_or_charlie(people):
    query = "What is the Pelican launch code?"
    vector = encode([query])[0]
    for searcher in (
        lambda user: search(user, query, vector, 10),
        lambda user: vector_search(user, vector, 10),
        lambda user: text_search(user, query, vector, 10),
    ):
        assert any("PELICAN-42" in hit.text for hit in searcher(people["bob"]))
        for name in ("alice", "charlie"):
            assert not any("PELICAN" in hit.text for hit in searcher(people[name]))


def test_it_lets_charlie_read_only_the_public_collection(people):
    vector = encode(["zebra migration and coffee"])[0]
    titles = {hit.title for hit in search(people["charlie"], "zebra coffee", vector, 10)}
    assert titles == {"Handbook"}


@pytest.mark.asyncio
async def test_it_does_not_leak_bobs_document_into_alices_chat(people, chat_client, fake_groq):
    async with chat_client(people["alice"]) as client:
        finish, _ = await client.answer("What is the Pelican launch code?")
    prompt_sources = " ".join(source["snippet"] for source in finish["sources"])
    assert "PELICAN" not in prompt_sources
    assert "launch" not in " ".join(source["title"] for source in finish["sources"]).lower()


@pytest.mark.asyncio
async def test_it_answers_not_found_for_another_users_conversation(people, chat_client):
    async with chat_client(people["bob"]) as bob:
        finish, frames = await bob.answer("Pelican launch code?")
    bob_conversation = frames[0]["conversation_id"]
    async with chat_client(people["alice"]) as alice:
        await alice.ask("Show me this conversation", conversation_id=bob_conversation)
        error, _ = await alice.until("error")
        assert error["code"] == "not_found"
        # and the connection still works
        finish, _ = await alice.answer("Where do zebras migrate?")
        assert finish["status"] == "complete"


@pytest.mark.asyncio
async def test_it_lets_others_connect_while_one_users_login_lookup_is_slow(people, monkeypatch):
    """Connections are authenticated side by side (a reconnect storm must not queue every login
    behind one thread): while alice's session lookup hangs, bob still gets in."""
    import threading

    from chat import middleware

    alice_id = str(people["alice"].pk)
    alice_waiting, release_alice = threading.Event(), threading.Event()
    lookup = middleware._session_user

    def slow_for_alice(scope):
        if scope["session"].get("_auth_user_id") == alice_id:
            alice_waiting.set()
            release_alice.wait(timeout=30)
        return lookup(scope)

    monkeypatch.setattr(middleware, "_session_user", slow_for_alice)
    alice = await communicator_for(people["alice"])
    alice_connecting = asyncio.ensure_future(alice.connect(timeout=30))
    try:
        assert await asyncio.to_thread(alice_waiting.wait, 10)
        bob = await communicator_for(people["bob"])
        connected, _ = await bob.connect(timeout=10)
        assert connected
        assert not alice_connecting.done()
    finally:
        release_alice.set()
    assert (await alice_connecting)[0]
    await bob.disconnect()
    await alice.disconnect()
