"""The benchmark's WebSocket clients, and the shapes of the load they make.

A client opens an authenticated WebSocket to ``/ws/chat/``, asks one question and records the time
from its ``ask`` to the first ``delta`` frame (time to first token) and to the ``finish`` frame
(total), and any error: a failed connection, an ``error`` frame, a finish status other than
``complete``, a timeout, or a crossover (the answer does not echo this client's own question: the
fake LLM echoes every question). The shapes: a burst (all connect, then all ask at once), a storm
(all start at once, each asks as soon as it is connected) and open-loop Poisson arrivals.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.corpus import TINY, Corpus
from bench.servers import Servers


# --- the WebSocket clients ---------------------------------------------------------------------
@dataclass
class Result:
    question: str
    connect: float | None = None  # seconds to open the WebSocket
    ack: float | None = None  # seconds from ask to the ack frame (the question is stored)
    first_token: float | None = None  # seconds from ask to the first delta frame
    total: float | None = None  # seconds from ask to the finish frame
    errors: list[str] = field(default_factory=list)
    server: dict[str, float] = field(default_factory=dict)  # the finish frame's timings (from after ack)
    status: str | None = None  # the finish frame's status
    echo: str | None = None  # the text the fake LLM echoes back, if not the question itself

    @property
    def connect_failed(self) -> bool:
        return any(error.startswith("connect:") for error in self.errors)


async def open_socket(url: str, origin: str, cookie: str, timeout: float, result: Result):
    from websockets.asyncio.client import connect

    started = time.perf_counter()
    try:
        socket_ = await connect(
            url,
            origin=origin,
            additional_headers={"Cookie": cookie},
            open_timeout=timeout,
            proxy=None,
            max_size=2**22,
            close_timeout=2,
        )
    except Exception as exc:  # refused, handshake rejected, timeout
        result.errors.append(f"connect: {type(exc).__name__}")
        return None
    result.connect = time.perf_counter() - started
    return socket_


async def ask(socket_, result: Result, timeout: float) -> None:
    """Send the question, read frames until ``finish``; fill ``result``."""
    frame = {
        "type": "ask",
        "conversation_id": None,
        "text": result.question,
        "client_id": str(uuid.uuid4()),
    }
    answer_id = None
    started = time.perf_counter()
    try:
        await socket_.send(json.dumps(frame))
        async with asyncio.timeout(timeout):
            while True:
                reply = json.loads(await socket_.recv())
                kind = reply.get("type")
                if kind == "ack":
                    result.ack = time.perf_counter() - started
                    answer_id = reply.get("answer_id")
                elif kind in ("delta", "finish") and reply.get("answer_id") != answer_id:
                    note(result, "crossover")  # a frame of another answer on this socket
                if kind == "delta" and result.first_token is None:
                    result.first_token = time.perf_counter() - started
                elif kind == "error":
                    result.errors.append(f"error frame: {reply.get('code')}")
                elif kind == "finish":
                    result.total = time.perf_counter() - started
                    result.server = reply.get("timings") or {}
                    result.status = reply.get("status")
                    check_finish(reply, result)
                    return
    except TimeoutError:
        result.errors.append("timeout")
    except Exception as exc:  # connection closed mid-answer
        result.errors.append(f"receive: {type(exc).__name__}")


def check_finish(frame: dict, result: Result) -> None:
    text = frame.get("text", "")
    if frame.get("status") != "complete":
        result.errors.append(f"finish status: {frame.get('status')}")
    elif text.startswith("I could not find"):
        result.errors.append("not found (retrieval found nothing, the LLM was not called)")
    elif f"«{result.echo or result.question}»" not in text:
        note(result, "crossover")  # not this client's own answer (the fake LLM echoes it)


def note(result: Result, error: str) -> None:
    if error not in result.errors:
        result.errors.append(error)


async def client(url: str, origin: str, cookie: str, go: asyncio.Event, result: Result, args) -> None:
    """One user: connect, wait for the start signal, ask, close."""
    socket_ = await open_socket(url, origin, cookie, args.connect_timeout, result)
    try:
        await go.wait()
        if socket_ is not None:
            await ask(socket_, result, args.answer_timeout)
    finally:
        if socket_ is not None:
            await socket_.close()


# --- the shapes of the load ----------------------------------------------------------------------
async def run_level(
    n: int,
    cookies: list[str],
    servers: Servers,
    args,
    tag: str = "",
    results: list[Result] | None = None,
    corpus: Corpus = TINY,
    storm: bool = False,
) -> list[Result]:
    """N clients connect, wait for every other one, then all ask at once; with ``storm``, each asks
    as soon as it is connected. Client i asks ``results[i].question`` (by default the corpus's
    questions, numbered after ``tag``)."""
    go = asyncio.Event()
    if results is None:
        results = [Result(corpus.numbered(i, tag)) for i in range(n)]
    tasks = [
        asyncio.create_task(client(servers.chat_url, servers.server_url, cookies[i], go, results[i], args))
        for i in range(n)
    ]
    if not storm:  # a storm's clients find the signal given before they even connect
        await wait_until_connected(results, args.connect_timeout + 5)
    go.set()
    await settle(tasks, results, args)
    return results


async def wait_until_connected(results: list[Result], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(r.connect is not None or r.errors for r in results):
            return
        await asyncio.sleep(0.02)


async def settle(tasks: list[asyncio.Task], results: list[Result], args) -> None:
    """Wait (bounded) for the clients, cancel those left; a chat with neither finish nor error timed out."""
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=args.answer_timeout + args.connect_timeout + 15)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if result.total is None and not result.errors:
            result.errors.append("timeout")


async def run_open(
    rate: float, cookies: list[str], servers: Servers, args, corpus: Corpus
) -> tuple[list[Result], float]:
    """Open-loop arrivals at ``rate``/s for ``args.duration`` s (Poisson, seeded by the rate: the same
    arrivals every run); each a new client that connects, asks at once and closes, the users taken
    in turn. Returns the results and the seconds from the start until the last client was done."""
    go = asyncio.Event()
    go.set()
    results: list[Result] = []
    tasks = []
    started = time.perf_counter()
    for i, at in enumerate(arrival_times(rate, args.duration)):
        await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
        results.append(Result(corpus.numbered(i, f"o{rate:g}-")))
        cookie = cookies[i % len(cookies)]
        tasks.append(asyncio.create_task(client(servers.chat_url, servers.server_url, cookie, go, results[-1], args)))
    await settle(tasks, results, args)
    return results, time.perf_counter() - started


def arrival_times(rate: float, duration: float) -> Iterator[float]:
    """Seconds after the start of a Poisson process's arrivals at ``rate``/s, up to ``duration``."""
    rng = random.Random(f"arrivals at {rate}")
    at = rng.expovariate(rate)
    while at < duration:
        yield at
        at += rng.expovariate(rate)
