"""Behind a reverse proxy or not: who may scrape /metrics, and which forwarding headers the server
(manage.py serve) believes. A proxy on the same host makes every request come from loopback, and a
forwarding header is written by whoever sends the request unless a known proxy wrote it."""

import http.client
from urllib.parse import urlencode

import pytest
from django.test import AsyncClient

from tests.conftest import LiveServer, make_user

TOKEN = "metrics-token-for-tests-0123456789"


def get(server: LiveServer, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One plain HTTP request, redirects not followed."""
    return request(server, "GET", path, headers=headers)


def request(server: LiveServer, method: str, path: str, body: str = "", headers: dict[str, str] | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request(method, path, body=body or None, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read().decode()
    connection.close()
    return response


def fail_to_sign_in(server: LiveServer, username: str, headers: dict[str, str]) -> None:
    """A wrong password through the login form, as a browser posts it (CSRF cookie and token)."""
    form = request(server, "GET", "/login/", headers=headers)
    cookie = form.getheader("Set-Cookie").split(";")[0]
    token = form.body.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    body = urlencode({"csrfmiddlewaretoken": token, "username": username, "password": "not-it"})
    form_headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    answer = request(server, "POST", "/login/", body, headers | form_headers)
    assert answer.status == 200 and "Wrong username or password" in answer.body


@pytest.mark.asyncio
@pytest.mark.django_db
async def test_it_never_takes_a_request_with_a_forwarding_header_for_a_local_scraper():
    client = AsyncClient()  # REMOTE_ADDR 127.0.0.1, as through a proxy on the same host
    assert (await client.get("/metrics")).status_code == 200
    for header in (
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9;proto=https"},
        {"X-Real-IP": "203.0.113.9"},
        {"X-Forwarded-For": "127.0.0.1"},
    ):
        assert (await client.get("/metrics", headers=header)).status_code == 403, header


@pytest.mark.asyncio
@pytest.mark.django_db
async def test_it_requires_the_bearer_token_once_one_is_configured(settings):
    settings.METRICS_TOKEN = TOKEN
    client = AsyncClient()
    assert (await client.get("/metrics")).status_code == 403  # loopback is no longer enough
    for wrong in (f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "):
        assert (await client.get("/metrics", headers={"Authorization": wrong})).status_code == 403, wrong
    scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "10.0.0.9"})
    assert scraped.status_code == 200 and b"docchat_" in scraped.content


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_server_believes_forwarding_headers_only_from_a_configured_proxy(fake_groq):
    """Production mode redirects plain HTTP to HTTPS: a request that says it came over HTTPS
    (X-Forwarded-Proto) is redirected anyway unless it came from a proxy in FORWARDED_ALLOW_IPS."""
    direct = LiveServer(fake_groq, DJANGO_PRODUCTION=1).start()
    behind = LiveServer(fake_groq, DJANGO_PRODUCTION=1, FORWARDED_ALLOW_IPS="127.0.0.1").start()
    try:
        https = {"X-Forwarded-Proto": "https"}
        assert get(direct, "/metrics", https).status == 301
        assert get(behind, "/metrics").status == 301
        assert get(behind, "/metrics", https).status == 200  # from loopback, no client address given
        assert get(behind, "/metrics", https | {"X-Forwarded-For": "203.0.113.9"}).status == 403
        assert get(direct, "/healthz").status == 200  # probes ask over plain HTTP
    finally:
        direct.stop()
        behind.stop()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_server_takes_the_client_address_from_x_forwarded_for_only_from_a_configured_proxy(fake_groq):
    """The login throttling counts failures per address: the one the server believed."""
    from axes.models import AccessAttempt

    make_user("dave")
    direct = LiveServer(fake_groq).start()
    behind = LiveServer(fake_groq, FORWARDED_ALLOW_IPS="127.0.0.1").start()
    try:
        fail_to_sign_in(direct, "dave", {"X-Forwarded-For": "203.0.113.9"})  # the client's own claim
        fail_to_sign_in(behind, "dave", {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})  # proxy appended
    finally:
        direct.stop()
        behind.stop()
    addresses = set(AccessAttempt.objects.values_list("ip_address", flat=True))
    assert addresses == {"127.0.0.1", "198.51.100.7"}
