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
    result = manage("check", DJANGO_PRODUCTION="1", DJANGO_SECRET_KEY="")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


def test_it_refuses_production_without_a_secret_key_even_in_debug_mode():
    result = manage("check", DJANGO_PRODUCTION="1", DJANGO_DEBUG="1", DJANGO_SECRET_KEY="")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


def test_it_refuses_to_run_with_debug_off_on_the_key_derived_from_the_path():
    result = manage("check", DJANGO_DEBUG="0", DJANGO_SECRET_KEY="")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr and "Traceback" not in result.stderr


def test_it_refuses_a_short_or_development_secret_key():
    short = manage("check", DJANGO_SECRET_KEY="hunter2-but-longer")
    assert short.returncode != 0 and "DJANGO_SECRET_KEY is too short" in short.stderr
    insecure = manage("check", DJANGO_SECRET_KEY="django-insecure-" + secrets.token_urlsafe(50))
    assert insecure.returncode != 0 and "DJANGO_SECRET_KEY is a development key" in insecure.stderr


def test_it_runs_debug_mode_on_the_development_key():
    result = manage("check", DJANGO_DEBUG="1", DJANGO_SECRET_KEY="")
    assert result.returncode == 0, result.stderr


def test_the_debug_page_masks_database_and_redis_urls_and_passwords_in_urls():
    code = (
        "import django, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup()\n"
        "from django.test import RequestFactory\n"
        "from django.views.debug import technical_500_response\n"
        "try:\n    raise RuntimeError('boom')\n"
        "except RuntimeError:\n"
        "    print(technical_500_response(RequestFactory().get('/'), *sys.exc_info()).content.decode())"
    )
    env = {
        **os.environ,
        "DJANGO_DEBUG": "1",
        "DATABASE_URL": "postgresql://app:s3cr3t-pw@db.internal/docchat",
        "REDIS_URL": "redis://:r3dis-pw@cache:6379/0",
        "GROQ_BASE_URL": "https://proxy:gr0q-pw@llm.internal/openai",
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    page = result.stdout
    assert "RuntimeError" in page and "GROQ_BASE_URL" in page  # the settings are on the page
    for password in ("s3cr3t-pw", "r3dis-pw", "gr0q-pw"):
        assert password not in page, password
    assert "proxy:***@llm.internal" in page


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
