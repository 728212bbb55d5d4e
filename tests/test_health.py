"""/healthz and /readyz."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_it_reports_alive(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_it_reports_ready_with_database_pgvector_and_model(client):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["checks"]["database"]["ok"]
    assert body["checks"]["pgvector"]["version"].startswith("0.")
    assert body["checks"]["embedding_model"]["ok"]


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
        "from django.test import Client\nr = Client().get('/readyz')\nprint(r.status_code, r.content.decode())",
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
