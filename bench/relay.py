"""The floor of the serving benchmark: a bare relay that speaks the chat protocol.

``bench/concurrency.py --server relay`` serves ``app`` (``relay-embed`` serves ``app_with_embedding``)
with ``manage.py serve``'s uvicorn settings, in place of the product. The relay does only what no
version of the product can skip: it accepts the WebSocket, acks the question, streams the answer
from the same LLM client (``chat.llm.groq``, the groq SDK on its aiohttp transport) through the same
delta coalescing (``chat.streaming``) and sends ``finish``. No login check, no database, no rate
limit, no breaker, no retrieval, no prompt: what the product costs above this is what its own work
costs. ``app_with_embedding`` also embeds each question with the product's micro-batched query
embedding (``documents.embedding``), the largest single CPU cost of an answer, so the two floors
split the product's cost into relay, query embedding, and the rest.

It also answers what the benchmark reads from a server: ``/healthz``, ``/readyz`` (is the embedding
model loaded) and ``/monitoring/api/summary?lag_since=T`` (its worst event-loop lag since T, probed
as the product's sampler probes it: every 0.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from collections import deque
from urllib.parse import parse_qs

import django
import uvicorn

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()  # settings only: the relay never opens a database connection

from django.conf import settings  # noqa: E402

from chat.llm.base import Generation  # noqa: E402
from chat.llm.groq import GroqProvider  # noqa: E402
from chat.management.commands.serve import uvicorn_options  # noqa: E402
from chat.streaming import DeltaCoalescer  # noqa: E402
from documents import embedding  # noqa: E402

LAG_PROBE_EVERY = 0.5
SYSTEM_PROMPT = "Answer the question."


class LoopLagProbe:
    """How late the event loop wakes a sleeper, every ``LAG_PROBE_EVERY`` s (the last 10 minutes)."""

    def __init__(self) -> None:
        self.lags: deque[tuple[float, float]] = deque(maxlen=1200)
        self.task: asyncio.Task | None = None

    def ensure_running(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PROBE_EVERY)
            self.lags.append((time.time(), max(0.0, time.monotonic() - before - LAG_PROBE_EVERY)))

    def max_since(self, since: float) -> float:
        return max((lag for at, lag in self.lags if at >= since), default=0.0)


class Relay:
    """An ASGI app: ``/ws/chat/`` relays answers; a few HTTP paths report on the process."""

    def __init__(self, embeds: bool) -> None:
        self.embeds = embeds
        self.ids = itertools.count(1)
        self.probe = LoopLagProbe()
        self.provider = GroqProvider(settings.GROQ_MODEL)

    async def __call__(self, scope, receive, send) -> None:
        self.probe.ensure_running()
        if scope["type"] == "websocket":
            await self.chat(receive, send)
        elif scope["type"] == "http":
            await self.http(scope, send)

    # --- HTTP ---------------------------------------------------------------------------------
    async def http(self, scope, send) -> None:
        path, query = scope["path"], parse_qs(scope["query_string"].decode())
        if path == "/healthz":
            body: dict = {"status": "ok"}
        elif path == "/readyz":
            body = {"checks": {"embedding_model": {"loaded": embedding.is_loaded() or not self.embeds}}}
        elif path == "/monitoring/api/summary":
            since = float(query.get("lag_since", ["0"])[0])
            body = {"loop_lag_ms": {"max_since": round(self.probe.max_since(since) * 1000, 1)}}
        else:
            body = {"error": "not found"}
        status = 404 if "error" in body else 200
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    # --- the chat socket ------------------------------------------------------------------------
    async def chat(self, receive, send) -> None:
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.connect":
                    await send({"type": "websocket.accept"})
                elif message["type"] == "websocket.receive":
                    frame = json.loads(message.get("text") or "{}")
                    if frame.get("type") == "ask":
                        task = asyncio.get_running_loop().create_task(self.answer(frame, send))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                elif message["type"] == "websocket.disconnect":
                    return
        finally:
            for task in tasks:
                task.cancel()

    async def answer(self, frame: dict, send) -> None:
        question_id, answer_id = next(self.ids), next(self.ids)

        async def send_frame(payload: dict) -> None:
            await send({"type": "websocket.send", "text": json.dumps(payload)})

        await send_frame(
            {
                "type": "ack",
                "client_id": frame.get("client_id"),
                "question_id": question_id,
                "answer_id": answer_id,
                "conversation_id": 0,
                "duplicate": False,
            }
        )
        started = time.monotonic()
        if self.embeds:
            await embedding.ensure_loaded()
            await embedding.embed_query(frame["text"])
        parts: list[str] = []

        async def flush(text: str) -> None:
            await send_frame({"type": "delta", "answer_id": answer_id, "text": text})

        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Question: {frame['text']}"},
        ]
        async with DeltaCoalescer(flush, settings.STREAM_COALESCE_MS / 1000) as out:
            async for delta in self.provider.stream(messages, Generation()):  # type: ignore[arg-type]
                parts.append(delta)
                out.add(delta)
        timings = {"total": round(time.monotonic() - started, 4)}
        await send_frame(
            {"type": "finish", "answer_id": answer_id, "status": "complete", "text": "".join(parts), "timings": timings}
        )


app = Relay(embeds=False)
app_with_embedding = Relay(embeds=True)


def main() -> None:
    """Serve ``app`` or ``app_with_embedding`` as ``manage.py serve`` serves the product."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", choices=("app", "app_with_embedding"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        f"bench.relay:{args.app}",
        host=args.host,
        port=args.port,
        **(uvicorn_options(args.workers) | {"lifespan": "off"}),
    )


if __name__ == "__main__":
    main()
