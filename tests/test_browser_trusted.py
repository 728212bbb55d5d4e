"""Trusted answers in a real browser (Debian's Chromium, the real server): the offline answer quoted
and cited, a model's unsupported sentences marked, and the question's length counted, at phone and
desktop widths. Screenshots go to test-artifacts/ (trusted-*.png)."""

import pytest

from tests import test_browser
from tests.conftest import LiveServer
from tests.test_browser import ask, last_answer, shot, signed_in_page

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
browser = test_browser.browser  # the Chromium fixture
PHONE, DESKTOP = {"width": 390, "height": 844}, {"width": 1280, "height": 800}
LIES = (
    "Zebras migrate across the Serengeti every year following the rains [1]. "
    "The great migration covers about 950 kilometres [1]. "
    "Read more at https://zebras.example.org/guide [1]."
)


@pytest.fixture
def offline_server(people, fake_groq):
    server = LiveServer(fake_groq, LLM_PROVIDER="extractive", LLM_PROVIDERS="extractive").start()
    yield server
    server.stop()


def test_it_shows_the_offline_answer_quoted_and_cited(offline_server, browser):
    for name, viewport in (("390", PHONE), ("1280", DESKTOP)):
        page = signed_in_page(browser, offline_server.url, "alice", viewport, 30_000)
        ask(page, "How far do zebras migrate?")
        answer = last_answer(page)
        answer.locator(".sources").wait_for()
        assert "800 kilometres" in answer.locator(".body").inner_text()
        assert "quoted from your documents" in answer.locator(".status").inner_text()
        assert answer.locator("a.cite").count() >= 1
        assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        shot(page, f"trusted-offline-{name}")
        page.context.close()


def test_it_marks_what_the_sources_do_not_say(people, web_server, fake_groq, browser):
    fake_groq.configure(text=LIES)
    for name, viewport in (("390", PHONE), ("1280", DESKTOP)):
        page = signed_in_page(browser, web_server.url, "alice", viewport, 30_000)
        ask(page, "Where do zebras migrate?")
        answer = last_answer(page)
        answer.locator(".sources").wait_for()
        marks = answer.locator("sup.unsupported")
        assert marks.count() == 2
        assert "950" in marks.first.get_attribute("title")
        assert answer.locator('a[href^="https://zebras.example.org"]').count() == 0  # shown as text only
        assert "2 sentences not found in the sources" in answer.locator(".status").inner_text()
        shot(page, f"trusted-flagged-{name}")
        page.context.close()


def test_it_counts_a_long_question_and_will_not_send_it(people, web_server, browser):
    page = signed_in_page(browser, web_server.url, "alice", PHONE, 30_000)
    page.fill("#question", "x" * 3300)
    counter = page.locator("#question-count")
    counter.wait_for()
    assert counter.inner_text().startswith("3300 / 4000") and page.locator("#send").is_enabled()
    page.fill("#question", "x" * 4010)
    page.locator("#question-count.over").wait_for()
    assert "too long by 10" in counter.inner_text() and page.locator("#send").is_disabled()
    page.press("#question", "Enter")
    assert page.locator(".msg.user").count() == 0  # nothing sent, nothing cut
    assert page.locator("#question").input_value() == "x" * 4010
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    shot(page, "trusted-too-long-390")
    page.context.close()
