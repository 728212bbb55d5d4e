"""The chat in a real browser: Debian's Chromium driven by Playwright, against the real server (manage.py serve) + fake LLM.

Screenshots go to test-artifacts/.
"""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chat.models import Message
from tests.conftest import ARTIFACTS, make_user

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "Debian's chromium package is required (the CI script installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(people, web_server, browser):  # ORM work first: Playwright runs a loop in this thread
    page = signed_in_page(browser, web_server.url, "alice", {"width": 1280, "height": 800}, 30_000)
    yield page
    page.context.close()


def signed_in_page(browser, url: str, username: str, viewport: dict, timeout_ms: int):
    """A new browser context's page, signed in as ``username`` (password: make_user's) on the chat."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(url + "/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-pass-123")
    page.click("button[type=submit]")
    page.wait_for_selector("#connection.ok")
    return page


def ask(page, text: str) -> None:
    page.fill("#question", text)
    page.press("#question", "Enter")


def last_answer(page):
    return page.locator(".msg.assistant").last


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_it_streams_cites_stops_reloads_and_reconnects_in_a_browser(page, web_server):
    # tokens appear progressively
    ask(page, "[[fake tokens=80 delay=0.05]] Where do zebras migrate?")
    answer = last_answer(page)
    answer.locator(".body").filter(has_text="You asked").wait_for()
    early = len(answer.locator(".body").inner_text())
    time.sleep(0.8)  # let more tokens stream in; we compare lengths, not time
    later = len(answer.locator(".body").inner_text())
    assert later > early > 0
    shot(page, "1-streaming")

    # finished: citations link to the sources panel
    answer.locator(".sources").wait_for()
    assert "Zebra migration" in answer.locator(".sources").inner_text()
    answer.locator("a.cite").first.click()
    assert answer.locator(".sources li.flash .snippet").is_visible()
    shot(page, "2-cited")

    # stop during a long answer
    ask(page, "[[fake tokens=600 delay=0.05]] Tell me everything about zebra stripes")
    page.locator("#stop").wait_for(state="visible")
    page.locator(".msg.assistant").nth(1).locator(".body").filter(has_text="You asked").wait_for()
    page.click("#stop")
    page.locator(".msg.assistant.stopped").wait_for()
    assert "stopped" in last_answer(page).locator(".status").inner_text()
    shot(page, "3-stopped")

    # reload: the conversation comes back from the server
    page.reload()
    page.wait_for_selector("#connection.ok")
    page.locator(".msg.assistant").nth(1).wait_for()
    assert page.locator(".msg.user").count() == 2
    assert page.locator(".msg.assistant.stopped").count() == 1
    assert "Where do zebras migrate?" in page.locator(".sidebar").inner_text()

    # server restarted mid-answer: the answer is saved as interrupted with its partial text; the
    # page reconnects, shows it so, and Retry asks the question again in the same conversation
    ask(page, "[[fake tokens=150 delay=0.05]] Zebras again, at length")
    third = page.locator(".msg.assistant").nth(2)
    third.locator(".body").filter(has_text="You asked").wait_for()
    web_server.stop()
    page.locator("#connection.warn").wait_for()
    shot(page, "4-disconnected")
    saved = in_thread(Message.objects.get, pk=int(third.get_attribute("data-id")))
    assert saved.status == "interrupted" and saved.text.startswith("You asked")
    web_server.start()
    page.wait_for_selector("#connection.ok", timeout=30_000)
    page.locator(".msg.assistant.interrupted .retry").wait_for()
    assert page.locator(".msg.user").count() == 3
    assert "interrupted" in page.locator(".msg.assistant.interrupted .status").inner_text()
    shot(page, "5-interrupted")
    page.click(".msg.assistant.interrupted .retry")
    page.locator(".msg.assistant").nth(3).locator(".sources").wait_for()
    assert page.locator(".msg.user").nth(3).inner_text().endswith("Zebras again, at length")
    shot(page, "6-retried")


def test_an_answer_survives_three_seconds_offline_and_completes_on_screen(page, fake_groq):
    ask(page, "[[fake tokens=160 delay=0.05]] Where do zebras migrate?")  # ~8 s of tokens
    answer = last_answer(page)
    answer.locator(".body").filter(has_text="You asked").wait_for()
    page.context.set_offline(True)
    page.locator("#connection.warn").filter(has_text="offline").wait_for()
    shot(page, "7-offline")
    time.sleep(3)  # three seconds without network: the scenario itself
    page.context.set_offline(False)
    answer.locator(".sources").wait_for()  # finished on screen, with nothing clicked
    saved = in_thread(Message.objects.get, pk=int(answer.get_attribute("data-id")))
    assert saved.status == "complete" and fake_groq.fake.stats.requests == 1
    assert answer.locator(".body").inner_text().split()[-1] == saved.text.split()[-1]
    assert "total" in answer.locator(".status").inner_text()
    shot(page, "8-back-online")


def in_thread(function, *args, **kwargs):
    """ORM work from a Playwright test: its sync API runs an event loop in this thread."""
    from django.db import connections

    def work():
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


@pytest.fixture
def dave(transactional_db):
    return make_user("dave")


def test_it_sends_a_logged_out_visitor_to_the_login_page(dave, web_server, browser):
    page = browser.new_page()
    page.goto(web_server.url + "/")
    assert "/login/" in page.url
    page.fill("#id_username", "dave")
    page.fill("#id_password", "wrong password")
    page.click("button[type=submit]")
    assert "Wrong username or password" in page.inner_text("body")
    shot(page, "0-login-error")
    page.close()


def test_the_dashboard_draws_charts_and_updates_live_during_a_chat(people, operator, web_server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    dashboard = context.new_page()
    dashboard.set_default_timeout(30_000)
    dashboard.goto(web_server.url + "/admin/login/?next=/monitoring/")
    dashboard.fill("#id_username", "operator")
    dashboard.fill("#id_password", "operator-pass-123")
    dashboard.click("input[type=submit]")
    dashboard.wait_for_selector("#chart-latency line", state="attached")  # the SVG axes are drawn
    assert dashboard.inner_text("#active-generations") == "0"

    chat = context.new_page()
    chat.goto(web_server.url + "/")
    chat.wait_for_selector("#connection.ok")
    # The operator reads only the public handbook: a question about it reaches the LLM (one about
    # alice's zebras could end at once as "not found"), long enough to be stopped on a slow box.
    ask(chat, "[[fake tokens=2000 delay=0.05]] When is the office coffee machine cleaned?")
    dashboard.wait_for_function("document.querySelector('#active-generations').textContent === '1'")
    assert dashboard.inner_text("#ws") == "1"
    shot(dashboard, "7-dashboard-live")
    chat.click("#stop")
    dashboard.wait_for_function("document.querySelector('#active-generations').textContent === '0'")
    assert "p95" in dashboard.inner_text("#latency")
    context.close()
