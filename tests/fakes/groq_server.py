"""A local server speaking Groq's OpenAI-compatible streaming chat-completions protocol.

Tests and benchmarks point the real groq SDK at it (GROQ_BASE_URL). The answer echoes the question
so concurrent chats can check they got their own answer. Behaviour is set for the whole server
(POST /_config) or per request by a directive in the question, e.g. ``[[fake tokens=50 delay=0.02]]``:

- ``tokens``: words in the answer; ``delay``: seconds between tokens; ``first_delay``: before the first
- ``text`` (server-wide only): the answer to send, e.g. one that states what its sources do not
- ``mode``: ``ok`` | ``hang`` (never sends a token) | ``error`` (HTTP ``status``) | ``cut`` (drops the
  connection after ``cut_after`` tokens)

GET /_stats reports requests, completed, disconnected (client closed early), active and max_active.
Run standalone: ``python -m tests.fakes.groq_server --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

DIRECTIVE = re.compile(r"\[\[fake ([^\]]*)\]\]")
DEFAULTS = {
    "tokens": 20,
    "delay": 0.0,
    "first_delay": 0.0,
    "mode": "ok",
    "status": 500,
    "cut_after": 3,
    "cite": 1,  # 0: the answer cites no source
    "text": "",  # when set (POST /_config): the answer, word for word, instead of the echo
}


class ClientGone(Exception):
    pass


@dataclass
class Stats:
    requests: int = 0
    completed: int = 0
    disconnected: int = 0
    active: int = 0
    max_active: int = 0
    questions: list[str] = field(default_factory=list)
    prompts: list[list[dict]] = field(default_factory=list)  # the messages of recent requests

    def as_dict(self) -> dict:
        counters = {k: v for k, v in self.__dict__.items() if k not in ("questions", "prompts")}
        return counters | {"last_questions": self.questions[-20:]}


class FakeGroq:
    def __init__(self) -> None:
        self.config: dict = dict(DEFAULTS)
        self.stats = Stats()
        self.app = web.Application()
        self.app.router.add_post("/openai/v1/chat/completions", self.completions)
        self.app.router.add_get("/_stats", self.get_stats)
        self.app.router.add_post("/_config", self.set_config)
        self.app.router.add_post("/_reset", self.reset)

    # --- control -----------------------------------------------------------------------------
    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())

    async def set_config(self, request: web.Request) -> web.Response:
        self.config.update(await request.json())
        return web.json_response(self.config)

    async def reset(self, request: web.Request) -> web.Response:
        self.config, self.stats = dict(DEFAULTS), Stats()
        return web.json_response({"ok": True})

    # --- the protocol ------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        last_user = next(
            (m["content"] for m in reversed(body["messages"]) if m["role"] == "user"),
            "",
        )
        question = last_user.rsplit("Question:", 1)[-1].strip()
        behaviour = self.behaviour_for(last_user)
        self.stats.requests += 1
        self.stats.questions.append(question)
        self.stats.prompts = [*self.stats.prompts[-49:], body["messages"]]
        if behaviour["mode"] == "error":
            return web.json_response(
                {"error": {"message": "injected failure", "type": "server_error"}},
                status=int(behaviour["status"]),
            )
        self.stats.active += 1
        self.stats.max_active = max(self.stats.max_active, self.stats.active)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await response.prepare(request)
            await self.stream(request, response, body, question, behaviour)
        except (ClientGone, ConnectionResetError):
            self.stats.disconnected += 1
        finally:
            self.stats.active -= 1
        return response

    def behaviour_for(self, text: str) -> dict:
        behaviour = dict(self.config)
        for match in DIRECTIVE.finditer(text):
            for pair in match.group(1).split():
                key, _, value = pair.partition("=")
                behaviour[key] = value if key == "mode" else float(value)
        return behaviour

    async def stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        body: dict,
        question: str,
        behaviour: dict,
    ) -> None:
        if behaviour["text"]:
            words = str(behaviour["text"]).split(" ")
        else:
            words = answer_words(question, int(behaviour["tokens"]), cite=bool(behaviour["cite"]))
        created = int(time.time())
        await pause(request, float(behaviour["first_delay"]))
        if behaviour["mode"] == "hang":
            await pause(request, 3600)
        for i, word in enumerate(words):
            if behaviour["mode"] == "cut" and i >= int(behaviour["cut_after"]):
                request.transport.close()  # type: ignore[union-attr]
                return
            if i:
                await pause(request, float(behaviour["delay"]))
            await send_event(
                response,
                chunk(body["model"], created, {"content": ("" if i == 0 else " ") + word}),
            )
        usage = {
            "prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
            "completion_tokens": len(words),
        }
        final = chunk(body["model"], created, {}, finish_reason="stop")
        final["x_groq"] = {
            "id": "req_fake",
            "usage": usage | {"total_tokens": usage["prompt_tokens"] + len(words)},
        }
        await send_event(response, final)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.stats.completed += 1


def answer_words(question: str, tokens: int, cite: bool = True) -> list[str]:
    clean = DIRECTIVE.sub("", question).strip()
    words = f"You asked: «{clean}»{' [1]' if cite else ''}.".split()
    return (words + [f"word{i}" for i in range(tokens)])[: max(tokens, 1)]


def chunk(model: str, created: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
    }


async def send_event(response: web.StreamResponse, payload: dict) -> None:
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())


async def pause(request: web.Request, seconds: float) -> None:
    """Wait like a slow model would, noticing a client that closed the connection meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        if request.transport is None or request.transport.is_closing():
            raise ClientGone()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.02))


class ServerThread:
    """The fake server on its own event loop in a daemon thread (for in-process tests)."""

    def __init__(self, port: int = 0) -> None:
        self.fake = FakeGroq()
        self.port = port
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-groq")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake Groq server did not start")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._loop.run_forever()

    async def _serve(self) -> None:
        runner = web.AppRunner(self.fake.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()

    def configure(self, **config) -> None:
        self.fake.config.update(config)

    def reset(self) -> None:
        self.fake.config, self.fake.stats = dict(DEFAULTS), Stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--tokens", type=int, default=DEFAULTS["tokens"])
    parser.add_argument("--delay", type=float, default=DEFAULTS["delay"])
    args = parser.parse_args()
    fake = FakeGroq()
    fake.config.update(tokens=args.tokens, delay=args.delay)
    web.run_app(
        fake.app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        backlog=2048,
        print=None,
    )


if __name__ == "__main__":
    main()
