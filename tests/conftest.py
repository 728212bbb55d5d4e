"""Shared fixtures: the fake Groq server, named users (alice, bob, charlie), their collections.

Everything is real: embedded PostgreSQL 18 + pgvector, the MiniLM model, the groq SDK over HTTP
to a local server speaking Groq's protocol.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from tests.fakes.groq_server import ServerThread

TEST_ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest.fixture(scope="session")
def fake_groq():
    server = ServerThread().start()
    yield server


@pytest.fixture(autouse=True)
def llm_points_at_fake(fake_groq):
    """Every test talks to the fake Groq server through the real SDK (no key, no internet)."""
    from chat import llm

    fake_groq.reset()
    settings.LLM_PROVIDER = "groq"
    settings.GROQ_API_KEY = "test-key-not-secret"
    settings.GROQ_BASE_URL = fake_groq.base_url
    settings.GROQ_MODEL = "fake-model"
    settings.RATE_LIMIT_PER_MINUTE = 10_000  # the rate-limit tests lower it again
    llm.forget_providers()
    yield fake_groq


@pytest.fixture
def use_openai(settings):
    """``use_openai(base_url, model)`` points the OpenAI-compatible provider at a server and makes it
    the default answer mode (``default=False``: one a conversation may choose); the providers made
    before are dropped, and again at the end."""
    from chat import llm

    def point(base_url: str, model: str = "fake-model", *, default: bool = True) -> None:
        settings.OPENAI_BASE_URL, settings.OPENAI_MODEL = base_url, model
        if default:
            settings.LLM_PROVIDER = "openai"
        else:
            settings.LLM_PROVIDERS = [*settings.LLM_PROVIDERS, "openai"]
        llm.forget_providers()

    yield point
    llm.forget_providers()


@pytest.fixture(autouse=True)
def fresh_readiness():
    """/readyz reuses its last result for a few seconds: each test sees its own database's."""
    from monitoring import readiness

    readiness.forget()


DOCS = {
    "alice": {
        "zebras.md": "# Zebra migration\n\nZebras migrate across the Serengeti every year following the rains. "
        "The great migration covers about 800 kilometres.\n\n## Stripes\n\nEach zebra has a unique stripe pattern.",
    },
    "bob": {
        "launch.txt": "Project Pelican launch code is PELICAN-42. The pelican launch happens on the rooftop "
        "at midnight and only Bob knows the code.",
    },
    "public": {
        "handbook.md": "# Handbook\n\nThe office coffee machine is cleaned every Friday by the facilities team. "
        "Vacation requests go through the HR portal two weeks in advance.",
    },
}


def make_user(username: str):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username, password=f"{username}-pass-123")


def make_staff(username: str = "operator"):
    """A staff (admin) user; the password follows make_user's pattern."""
    user = make_user(username)
    user.is_staff = user.is_superuser = True
    user.save()
    return user


@pytest.fixture
def operator(transactional_db):
    return make_staff()


def make_collection(name: str, owner, files: dict[str, str], tmp_path: Path, *, public=False, members=()):
    from documents.actions import do_ingest_file
    from documents.models import Collection

    collection = Collection.objects.create(name=name, owner=owner, is_public=public)
    collection.members.add(*members)
    folder = tmp_path / name
    folder.mkdir()
    for filename, text in files.items():
        path = folder / filename
        path.write_text(text)
        result = do_ingest_file(path, collection)
        assert result.document.status == "ready", result.document.error
    return collection


@pytest.fixture
def handbook(tmp_path):
    """The demo collection: docs/ ingested for real, as `make run` does, readable by its owner ``reader``."""
    reader = make_user("reader")
    files = {path.name: path.read_text() for path in sorted(settings.DEMO_DOCS_DIR.glob("*.md"))}
    make_collection("DocChat handbook", reader, files, tmp_path)
    return reader


@pytest.fixture
def people(db, tmp_path):
    """alice owns a private collection, bob owns a private one, charlie has only the public one."""
    alice, bob, charlie = make_user("alice"), make_user("bob"), make_user("charlie")
    make_collection("alice-docs", alice, DOCS["alice"], tmp_path)
    make_collection("bob-secrets", bob, DOCS["bob"], tmp_path)
    make_collection("handbook", alice, DOCS["public"], tmp_path, public=True)
    return {"alice": alice, "bob": bob, "charlie": charlie}


def session_cookie(user) -> bytes:
    """A real session cookie for ``user``, as a browser has after logging in."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


async def communicator_for(user, *, origin: tuple[bytes, bytes] | None = TEST_ORIGIN) -> WebsocketCommunicator:
    """A communicator through the full ASGI stack (origin check, session auth, routing)."""
    from config.asgi import application

    headers = [origin] if origin else []
    if user is not None:
        headers.append((b"cookie", await database_sync_to_async(session_cookie)(user)))
    return WebsocketCommunicator(application, "/ws/chat/", headers=headers)


class ChatClient:
    """A connected WebSocket chat client for tests, with helpers that read the protocol."""

    def __init__(self, user) -> None:
        self.user = user

    async def __aenter__(self) -> ChatClient:
        self.communicator = await communicator_for(self.user)
        connected, _ = await self.communicator.connect(timeout=30)
        assert connected
        return self

    async def __aexit__(self, *exc) -> None:
        await self.communicator.disconnect()

    async def ask(
        self,
        text: str,
        conversation_id: int | None = None,
        client_id: str | None = None,
        provider: str | None = None,
    ) -> str:
        client_id = client_id or str(uuid.uuid4())
        await self.send(
            {
                "type": "ask",
                "conversation_id": conversation_id,
                "text": text,
                "client_id": client_id,
                "provider": provider,
            }
        )
        return client_id

    async def send(self, frame) -> None:
        await self.communicator.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))

    async def receive(self, timeout: float = 30) -> dict:
        return await self.communicator.receive_json_from(timeout=timeout)

    async def until(self, kind: str, timeout: float = 60) -> tuple[dict, list[dict]]:
        """Frames up to and including the first of type ``kind``."""
        seen: list[dict] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.receive(timeout)
                seen.append(frame)
                if frame["type"] == kind:
                    return frame, seen

    async def answer(self, text: str, **kwargs) -> tuple[dict, list[dict]]:
        await self.ask(text, **kwargs)
        return await self.until("finish")

    async def stop_after_first_delta(self, text: str) -> dict:
        """Ask, stop the answer once it streams, and return its ``finish`` frame."""
        await self.ask(text)
        ack = await self.receive()
        await self.until("delta")
        await self.send({"type": "stop", "answer_id": ack["answer_id"]})
        finish, _ = await self.until("finish")
        return finish


@pytest.fixture
def chat_client():
    return ChatClient


def streamed_text(frames: list[dict]) -> str:
    return "".join(frame["text"] for frame in frames if frame["type"] == "delta")


async def count_connections() -> int:
    return await database_sync_to_async(_count_connections)()


def _count_connections() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'"
        )
        return cursor.fetchone()[0]


@pytest.fixture(scope="session", autouse=True)
def close_db_pool_at_end(django_db_setup, django_db_blocker):
    """Return the pool's connections before pytest-django drops the test database."""
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        for connection in connections.all():
            connection.close_pool()
            connection.close()


def subprocess_env(**extra) -> dict[str, str]:
    """Environment for a server or worker subprocess that must use this test run's database."""
    import os

    from django.db import connection

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONUNBUFFERED": "1",
    }
    name = connection.settings_dict["NAME"]
    if settings.DATABASE_URL:
        base = settings.DATABASE_URL.rsplit("/", 1)[0]
        env["DATABASE_URL"] = f"{base}/{name}"
    else:
        env["EMBEDDED_PG_DB"] = name
    return {**env, **{key: str(value) for key, value in extra.items()}}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The product's server (``manage.py serve``: uvicorn) in a subprocess, on this test run's database."""

    def __init__(self, fake_groq, **env) -> None:
        self.port = free_port()
        defaults = {
            "LLM_PROVIDER": "groq",
            "GROQ_API_KEY": "test-key-not-secret",
            "GROQ_BASE_URL": fake_groq.base_url,
            "GROQ_MODEL": "fake-model",
            "RATE_LIMIT_PER_MINUTE": 10_000,
        }
        self.env = subprocess_env(**(defaults | env))
        self.process = None
        self.log_path = ARTIFACTS / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        import subprocess
        import sys

        ARTIFACTS.mkdir(exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=log, stderr=log,
        )  # fmt: skip
        wait_until_serving(self.url + "/healthz", self.process, self.log_path)
        return self

    def stop(self) -> None:
        import signal

        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except Exception:
                self.process.kill()
                self.process.wait(10)


ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def wait_until_serving(url: str, process: subprocess.Popen, log_path: Path, seconds: float = 60) -> None:
    """Return once ``url`` answers; raise if ``process`` exits first or ``seconds`` pass."""
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited; see {log_path}") from None
            time.sleep(0.2)  # waiting for the server to listen
    raise RuntimeError(f"the server did not start within {seconds:.0f} s; see {log_path}")


@pytest.fixture
def redis_server(tmp_path):
    """A Redis of our own on a free port, so the test can kill it."""
    executable = shutil.which("redis-server")
    assert executable, "redis-server is required (installed on this kind of machine)"
    port = free_port()
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis_lib.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis_lib.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)  # waiting for the server to listen
    yield {"url": f"redis://127.0.0.1:{port}/0", "client": client, "process": process}
    process.kill()
    process.wait(10)


@pytest.fixture
def web_server(transactional_db, fake_groq):
    server = LiveServer(fake_groq).start()
    yield server
    server.stop()
