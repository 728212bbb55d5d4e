"""/healthz and /readyz."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_it_reports_alive(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


TOKEN = "scraper-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN


@pytest.mark.django_db
def test_it_reports_ready_with_database_pgvector_and_model(client, token):
    response = client.get("/readyz", headers=BEARER)
    body = response.json()
    assert response.status_code == 200, body
    assert body["checks"]["database"]["ok"]
    assert body["checks"]["pgvector"]["version"].startswith("0.")
    assert body["checks"]["embedding_model"]["ok"]


@pytest.mark.django_db
def test_it_shows_the_checks_only_to_staff_and_to_the_metrics_token(client, token):
    from tests.conftest import make_staff

    anonymous = client.get("/readyz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
    assert client.get("/readyz", headers={"Authorization": "Bearer wrong"}).json() == {"status": "ready"}
    assert "checks" in client.get("/readyz", headers=BEARER).json()
    client.force_login(make_staff())
    assert "embedding_model" in client.get("/readyz").json()["checks"]


@pytest.mark.django_db
def test_it_answers_probes_within_the_cache_window_without_touching_the_database(client, token, settings):
    from django.db.backends.signals import connection_created

    settings.READYZ_CACHE_SECONDS = 60
    connections_opened = []

    def opened(sender, connection, **kwargs):
        connections_opened.append(connection)

    connection_created.connect(opened)  # whichever thread the checks run on
    try:
        first = client.get("/readyz", headers=BEARER).json()
        assert connections_opened, "the first probe did not reach the database"
        connections_opened.clear()
        for _ in range(5):
            again = client.get("/readyz", headers=BEARER).json()
            assert again["checked_at"] == first["checked_at"]
    finally:
        connection_created.disconnect(opened)
    assert connections_opened == []


@pytest.mark.django_db
def test_it_reports_not_ready_once_the_cache_expires_after_redis_died(client, token, settings, redis_server):
    settings.REDIS_URL = redis_server["url"]
    settings.READYZ_CACHE_SECONDS = 1.0
    ready = client.get("/readyz", headers=BEARER)
    assert ready.status_code == 200 and ready.json()["checks"]["redis"] == {"ok": True}
    redis_server["process"].kill()
    redis_server["process"].wait(10)
    assert client.get("/readyz", headers=BEARER).json()["checked_at"] == ready.json()["checked_at"]  # cached
    time.sleep(1.1)  # waiting for the cache window to pass
    down = client.get("/readyz", headers=BEARER)
    assert down.status_code == 503 and down.json()["status"] == "not ready"
    assert down.json()["checks"]["redis"]["ok"] is False
    assert client.get("/readyz").json() == {"status": "not ready"}  # anonymous: the status only


@pytest.mark.django_db
def test_it_checks_redis_over_one_kept_connection(client, settings, redis_server):
    settings.REDIS_URL = redis_server["url"]
    settings.READYZ_CACHE_SECONDS = 0
    before = redis_server["client"].info("stats")["total_connections_received"]
    for _ in range(4):
        assert client.get("/readyz").status_code == 200
    assert redis_server["client"].info("stats")["total_connections_received"] - before == 1


def run_django(code: str, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process with Django set up and extra environment."""
    script = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup()\n" + code
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_reports_not_ready_when_the_database_is_unreachable():
    result = run_django(
        "from django.test import Client\n"
        f"r = Client().get('/readyz', headers={BEARER!r})\nprint(r.status_code, r.content.decode())",
        METRICS_TOKEN=TOKEN,
        DATABASE_URL="postgresql://nobody:secret-pw@127.0.0.1:9/nowhere",
        DB_POOL_TIMEOUT="2",
        DB_POOL_MIN="0",
    )
    status, body = result.stdout.strip().split(" ", 1)
    assert status == "503", result.stderr[-2000:]
    checks = json.loads(body)["checks"]
    assert checks["database"]["ok"] is False
    assert "unreachable" in checks["database"]["error"]
    assert "secret-pw" not in result.stdout + result.stderr
