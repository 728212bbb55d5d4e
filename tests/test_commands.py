"""manage.py ask and search, as an operator uses them."""

import pytest
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db(transaction=True)


def test_ask_streams_an_answer_with_its_sources(people, capsys):
    call_command("ask", "Where do zebras migrate?", "--user", "alice")
    out = capsys.readouterr().out
    assert "You asked: «Where do zebras migrate?» [1]." in out
    assert "[1] Zebra migration" in out
    assert "complete" in out


def test_ask_fails_clearly_for_an_unknown_user(people):
    with pytest.raises(CommandError, match="no user named 'mallory'"):
        call_command("ask", "hello", "--user", "mallory")


def test_ask_reports_an_answer_that_did_not_complete(people, settings):
    settings.LLM_FIRST_TOKEN_TIMEOUT = 0.3
    with pytest.raises(CommandError, match="degraded: The language model took too long"):
        call_command("ask", "[[fake mode=hang]] Where do zebras migrate?", "--user", "alice")


def test_search_prints_ranked_results_the_user_may_read(people, capsys):
    call_command("search", "Pelican launch code", "--user", "bob")
    assert "[1]" in capsys.readouterr().out
    call_command("search", "Pelican launch code", "--user", "charlie")
    assert "PELICAN" not in capsys.readouterr().out
