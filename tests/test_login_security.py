"""Sign-in cannot be brute-forced: failed logins are throttled (django-axes) on our login page and
the admin's, with a clear page, and the demo administrator's password passes the validators."""

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import AsyncClient, Client

from tests.conftest import make_staff, make_user

LIMIT = 3
BLOCKED = "Too many failed sign-in attempts"


@pytest.fixture(autouse=True)
def small_limit(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT


def sign_in(client: Client, username: str, password: str, path: str = "/login/"):
    return client.post(path, {"username": username, "password": password})


@pytest.mark.django_db
def test_it_blocks_a_username_after_repeated_failures_with_a_clear_page():
    make_user("dave")
    client = Client()
    for _ in range(LIMIT - 1):
        wrong = sign_in(client, "dave", "not-it")
        assert wrong.status_code == 200 and "Wrong username or password" in wrong.content.decode()
    blocked = sign_in(client, "dave", "not-it")
    assert blocked.status_code == 429 and BLOCKED in blocked.content.decode()
    assert "Traceback" not in blocked.content.decode()
    right = sign_in(client, "dave", "dave-pass-123")  # even the right password, while blocked
    assert right.status_code == 429 and BLOCKED in right.content.decode()
    assert right["Retry-After"] == "900"
    assert client.get("/").status_code == 302  # not signed in


@pytest.mark.django_db
def test_it_blocks_the_admin_login_too():
    make_staff("operator")
    client = Client()
    for _ in range(LIMIT):
        sign_in(client, "operator", "not-it", path="/admin/login/")
    blocked = sign_in(client, "operator", "operator-pass-123", path="/admin/login/")
    assert blocked.status_code == 429 and BLOCKED in blocked.content.decode()
    assert client.get("/admin/").status_code == 302


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_shows_the_page_under_asgi():
    """The server runs Django under ASGI, where axes takes its async path."""
    await database_sync_to_async(make_user)("erin")
    client = AsyncClient()
    try:
        for _ in range(LIMIT):
            await client.post("/login/", {"username": "erin", "password": "not-it"})
        blocked = await client.post("/login/", {"username": "erin", "password": "erin-pass-123"})
        assert blocked.status_code == 429 and BLOCKED in blocked.content.decode()
    finally:
        # The login view ran on asgiref's thread for sync code; the test client leaves its
        # connection open (no request_finished clean-up), which would keep the test database busy.
        await sync_to_async(connections.close_all)()


@pytest.mark.django_db
def test_it_blocks_only_that_username_from_that_address():
    make_user("dave")
    make_user("frank")
    for _ in range(LIMIT):
        sign_in(Client(), "dave", "not-it")
    assert sign_in(Client(), "frank", "frank-pass-123").status_code == 302  # another user, same address
    elsewhere = Client(REMOTE_ADDR="198.51.100.7")
    assert sign_in(elsewhere, "dave", "dave-pass-123").status_code == 302  # same user, another address


@pytest.mark.django_db
def test_it_forgets_failures_after_a_successful_sign_in():
    make_user("dave")
    for _ in range(3):
        client = Client()
        for _ in range(LIMIT - 1):
            sign_in(client, "dave", "not-it")
        assert sign_in(client, "dave", "dave-pass-123").status_code == 302


@pytest.mark.django_db
def test_setup_demo_refuses_a_weak_demo_password_with_a_clear_error(settings):
    settings.DEMO_USERNAME = "demo"
    for weak, reason in (("password", "too common"), ("demo1", "too short"), ("83920175", "entirely numeric")):
        settings.DEMO_PASSWORD = weak
        with pytest.raises(CommandError, match=f"DEMO_PASSWORD is not accepted: .*{reason}"):
            call_command("setup_demo")
    assert not get_user_model().objects.filter(username="demo").exists()
