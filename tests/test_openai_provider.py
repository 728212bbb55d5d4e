"""The OpenAI-compatible provider for real: the openai SDK against ``llama_cpp.server`` serving the
shipped SmolLM2 GGUF, and against the fake Groq server (which speaks the same protocol) for the
failures a healthy server does not show on demand."""

import json
import logging
import subprocess
import sys

import pytest

from chat.llm import local
from tests.conftest import ARTIFACTS, free_port, streamed_text, wait_until_serving
from tests.test_chat_cancellation import LONG, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]
API_KEY = "sk-test-must-never-be-shown-7f3a"


@pytest.fixture(scope="session")
def llama_server():
    """``python -m llama_cpp.server`` on a free port: the base URL of its OpenAI-compatible API."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"llama-cpp-server-{port}.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(local.gguf_path()),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_serving(f"{base_url}/models", process, log_path, seconds=90)
        yield base_url
    finally:
        process.kill()
        process.wait(10)


@pytest.fixture
def openai_on_fake(use_openai, fake_groq, settings):
    """The openai SDK talks to the fake Groq server, with a key that must never be shown."""
    settings.OPENAI_API_KEY = API_KEY
    use_openai(f"{fake_groq.base_url}/openai/v1")
    return fake_groq


@pytest.mark.slow
async def test_it_answers_a_chat_streamed_from_a_real_openai_compatible_server(
    llama_server, use_openai, people, chat_client, settings
):
    use_openai(llama_server, "SmolLM2-135M-Instruct")
    settings.LLM_MAX_TOKENS = 24  # a short answer: the test is about the stream, not its wording
    async with chat_client(people["alice"]) as client:
        finish, frames = await client.answer("Where do zebras migrate?")
    start = next(f for f in frames if f["type"] == "start")
    assert (start["provider"], start["model"]) == ("openai", "SmolLM2-135M-Instruct")
    assert {"type": "status", "answer_id": finish["answer_id"], "stage": "generating"} in frames
    assert streamed_text(frames).strip(), frames
    assert finish["status"] == "complete", finish
    assert (finish["provider"], finish["model"]) == ("openai", "SmolLM2-135M-Instruct")
    # llama_cpp.server counts no tokens in a stream (it ignores stream_options): usage stays unknown.
    assert set(finish["usage"]) == {"prompt_tokens", "completion_tokens"}
    assert finish["timings"]["first_token"] > 0 and finish["sources"]


@pytest.mark.parametrize(
    "directive, code, status",
    [
        ("[[fake mode=hang]]", "llm_timeout", "degraded"),  # no first token in time
        ("[[fake mode=error status=500]]", "llm_unavailable", "degraded"),
        ("[[fake mode=error status=400]]", "llm_request_rejected", "degraded"),  # refused: e.g. too long
        ("[[fake mode=cut cut_after=3]]", "llm_stream_cut", "failed"),  # part of the answer was shown
    ],
)
async def test_it_turns_model_server_failures_into_typed_errors(
    openai_on_fake, people, chat_client, settings, caplog, directive, code, status
):
    settings.LLM_FIRST_TOKEN_TIMEOUT = 0.5
    caplog.set_level(logging.DEBUG)
    async with chat_client(people["alice"]) as client:
        finish, frames = await client.answer(f"{directive} Where do zebras migrate?")
    error = next(f for f in frames if f["type"] == "error")
    assert (error["code"], finish["status"], finish["error_code"]) == (code, status, code)
    assert finish["provider"] == "openai"
    await wait_for(lambda: openai_on_fake.fake.stats.active == 0)  # no request left open
    assert API_KEY not in json.dumps(frames) + caplog.text


async def test_it_closes_the_http_call_when_the_answer_is_stopped(openai_on_fake, people, chat_client):
    async with chat_client(people["alice"]) as client:
        finish = await client.stop_after_first_delta(LONG)
    assert finish["status"] == "stopped" and finish["provider"] == "openai" and finish["text"]
    await wait_for(lambda: openai_on_fake.fake.stats.disconnected == 1)
