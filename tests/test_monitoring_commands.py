"""manage.py monitor and breakers, against a running server."""

import json

import pytest
from django.core.management import CommandError, call_command

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_monitor_once_prints_the_servers_summary_as_json(operator, web_server, capsys):
    call_command("monitor", "--once", "--url", web_server.url)
    summary = json.loads(capsys.readouterr().out)
    assert summary["llm"] == {"provider": "groq", "model": "fake-model"}
    assert {b["name"] for b in summary["breakers"]} == {"llm", "embedding", "retrieval"}
    assert summary["pool"]["max"] == 10


def test_breakers_lists_and_resets(operator, web_server, capsys):
    call_command("breakers", "--url", web_server.url)
    assert "llm        closed" in capsys.readouterr().out
    call_command("breakers", "--reset", "llm", "--url", web_server.url)
    assert "breaker llm reset" in capsys.readouterr().out


def test_monitor_explains_an_unreachable_server(operator):
    with pytest.raises(CommandError, match="cannot reach the server"):
        call_command("monitor", "--once", "--url", "http://127.0.0.1:9")
