"""My documents in a real browser (Debian's Chromium via Playwright): upload by button and by drag
and drop, live progress from the real worker over the chat socket, a cited answer from the
upload, the search choice, a corrupt file's reason, delete. Screenshots go to test-artifacts/."""

import signal
import subprocess
import sys

import pytest

from documents.models import Collection
from tests import test_browser
from tests.conftest import ARTIFACTS, ROOT, make_user, subprocess_env
from tests.test_browser import ask, last_answer, shot, signed_in_page
from tests.test_my_documents import herons

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
browser = test_browser.browser  # the Chromium fixture

DRAG_FILES = """(files) => {
    const data = new DataTransfer();
    for (const [name, text] of files) data.items.add(new File([text], name, { type: "application/octet-stream" }));
    const zone = document.getElementById("drop-zone");
    for (const type of ["dragenter", "dragover"]) {
        zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
    }
    window.droppedFile = data;  // dropped by drop() once the overlay is on the screenshot
}"""
DROP = """() => {
    const zone = document.getElementById("drop-zone");
    zone.dispatchEvent(new DragEvent("drop", { dataTransfer: window.droppedFile, bubbles: true, cancelable: true }));
}"""


@pytest.fixture
def alice(transactional_db):
    alice = make_user("alice")
    Collection.objects.create(name="Team handbook", owner=make_user("carol"), is_public=True)
    return alice


@pytest.fixture
def worker(transactional_db):
    """The ingestion worker, two chunks per engine call: the progress is there to be seen."""
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "browser-documents-worker.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "worker", "--no-startup-delay", "--interval", "0.2"],
            cwd=ROOT, env=subprocess_env(INGEST_ENCODE_CHUNKS=2), stdout=log, stderr=log,
        )  # fmt: skip
    yield process
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def test_it_uploads_shows_progress_answers_from_and_deletes_my_documents_in_a_browser(
    alice, web_server, worker, browser, tmp_path
):
    page = signed_in_page(browser, web_server.url, "alice", {"width": 1400, "height": 860}, 60_000)
    context = page.context

    page.click("#docs-toggle")
    page.locator("#docs-empty").wait_for()
    shot(page, "docs-1-panel")

    # the button: a long document, embedded two chunks at a time
    path = tmp_path / "herons.md"
    path.write_text(herons(70))
    page.set_input_files("#docs-input", str(path))
    page.locator('.doc[data-status="embedding"] progress').wait_for()
    shot(page, "docs-2-progress")
    ready = page.locator('.doc[data-status="ready"]')
    ready.wait_for()
    assert "Herons of Lake Ashdown" in ready.inner_text() and "ready ·" in ready.inner_text()
    shot(page, "docs-3-ready")

    # drag and drop: a corrupt PDF fails in the worker with its reason on the page; a program is
    # refused at once
    page.evaluate(DRAG_FILES, [["report.pdf", "%PDF-1.7\n1 0 obj << /Kids [ broken"], ["setup.exe", "MZ"]])
    shot(page, "docs-4-dragging")
    page.evaluate(DROP)
    failed = page.locator('.doc[data-status="failed"]')
    failed.wait_for()
    assert "failed: the PDF is corrupt or unreadable" in failed.inner_text()
    refused = page.locator(".docs-notice.error")
    assert "setup.exe: unsupported file type .exe; supported:" in refused.inner_text()
    shot(page, "docs-5-failed")

    # a cited answer from the upload
    ask(page, "When do the grey herons of Lake Ashdown build their nests?")
    answer = last_answer(page)
    answer.locator(".sources").wait_for()
    assert "Herons of Lake Ashdown" in answer.locator(".sources").inner_text()
    answer.locator("a.cite").first.click()
    shot(page, "docs-6-cited-answer")

    # this conversation searches no longer My documents: the same question finds nothing
    page.locator("#scope-list label", has_text="My documents").locator("input").uncheck()
    page.locator("#scope-summary", has_text="1 of 2 collections").wait_for()
    ask(page, "When do the grey herons of Lake Ashdown build their nests?")
    page.locator(".msg.assistant").nth(1).locator(".status").filter(has_text="total").wait_for()
    assert page.locator(".msg.assistant").nth(1).locator(".sources").count() == 0
    shot(page, "docs-7-search-choice")

    # delete
    page.once("dialog", lambda dialog: dialog.accept())
    ready.locator(".doc-delete").click()
    ready.wait_for(state="detached")
    assert page.locator(".doc").count() == 1  # the failed one
    shot(page, "docs-8-deleted")
    context.close()
