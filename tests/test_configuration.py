"""Configuration faults fail fast with a clear message, and secrets never show."""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_refuses_a_garbage_database_url_naming_the_variable():
    result = manage("check", DATABASE_URL="mysql-ish:://nonsense")
    assert result.returncode != 0
    assert "DATABASE_URL must be a URL with scheme postgres" in result.stderr


def test_it_fails_fast_on_an_unreachable_database_without_showing_the_password():
    started = time.monotonic()
    result = manage("migrate", DATABASE_URL="postgresql://app:hunter2-secret@127.0.0.1:9/docchat", DB_POOL_TIMEOUT="3")
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    output = result.stdout + result.stderr
    assert "hunter2-secret" not in output
    assert "127.0.0.1" in output and ("refused" in output or "failed" in output)


def test_it_names_the_variable_of_a_bad_number():
    result = manage("check", DB_POOL_MAX="lots")
    assert result.returncode != 0
    assert "DB_POOL_MAX must be an integer, got 'lots'" in result.stderr


def test_it_refuses_production_without_a_secret_key():
    result = manage("check", DJANGO_PRODUCTION="1")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set when DJANGO_PRODUCTION=1" in result.stderr


def test_check_deploy_is_clean_with_production_settings():
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING",
        DJANGO_PRODUCTION="1", DJANGO_SECRET_KEY=secrets.token_urlsafe(60), ALLOWED_HOSTS="chat.example.com",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_the_configuration_summary_masks_passwords():
    code = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup()\n"
        "from config.settings import describe_configuration; print(describe_configuration())"
    )
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://app:s3cr3t-pw@db.internal/docchat",
        "REDIS_URL": "redis://:r3dis-pw@cache:6379/0",
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-pw" not in result.stdout and "r3dis-pw" not in result.stdout
    assert "app:***@db.internal" in result.stdout
