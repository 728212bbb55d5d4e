"""A staff client of the running server's monitoring API, for the terminal commands.

Breakers, streams and loop lag live in the server process, so the commands ask the server; the
command signs in as a staff user by creating a session in the database (no password needed)."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.request

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.core.management.base import CommandError


class MonitoringClient:
    @staticmethod
    def add_arguments(parser) -> None:
        """The options every command that talks to the server takes: where it is, and as whom."""
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--user", help="staff user to act as (default: the first staff user)")

    def __init__(self, base_url: str, username: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.session_key = _staff_session(username)

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None, cookies: str = "") -> bytes:
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers or {})
        session = f"{settings.SESSION_COOKIE_NAME}={self.session_key}"
        request.add_header("Cookie", f"{session}; {cookies}" if cookies else session)
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.read()
        except OSError as exc:
            raise CommandError(f"cannot reach the server at {self.base_url} ({exc})") from None

    def get(self, section: str = "summary") -> dict:
        return json.loads(self._request(f"/monitoring/api/{section}"))

    def reset_breaker(self, name: str) -> dict:
        page = self._request("/monitoring/").decode()
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        cookie = next((c.value for c in self.jar if c.name == settings.CSRF_COOKIE_NAME), "")
        if match is None:
            raise CommandError("the dashboard did not provide a CSRF token")
        headers = {"X-CSRFToken": match.group(1), "Referer": self.base_url + "/monitoring/"}
        cookies = f"{settings.CSRF_COOKIE_NAME}={cookie}"
        return json.loads(self._request(f"/monitoring/api/breakers/{name}/reset", b"", headers, cookies))


def _staff_session(username: str | None) -> str:
    users = get_user_model().objects.filter(is_staff=True, is_active=True)
    user = users.filter(username=username).first() if username else users.order_by("pk").first()
    if user is None:
        raise CommandError("no active staff user" + (f" named {username!r}" if username else ""))
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.set_expiry(300)
    session.save()
    assert session.session_key is not None  # save() assigned it
    return session.session_key
