"""Answers being written in this process, whoever is listening.

An answer runs as a task of its own, not of the socket that asked: a disconnect only stops the
listening; ``stop`` is what cancels. Each answer keeps what it has sent as a short log (its stage
frames, then one delta holding all its text so far), so a client that comes back (the same tab
after a network blip, another tab, another device) gets the answer so far at once and then the
rest as it is written. A finished answer stays ``ANSWER_REPLAY_SECONDS`` for a late follower.

Across processes (REDIS_URL): a follower in another process publishes a request on one channel
that every process listens to (one subscription per process while it has answers), and the
process writing the answer mirrors its log, then its frames, into a Redis stream per answer that
the follower reads from its start. A ``stop`` reaches the writing process the same way. Without
Redis, and whenever the answer runs nowhere we can hear of, the follower waits for the database
to hold the answer's final state.

Bounded: a user's answers running with nobody listening are capped
(``MAX_DETACHED_ANSWERS_PER_USER``; the next one left alone is stopped); an answer's log is its
text, bounded by the model's ``max_tokens`` and the total timeout; a mirror stops sending deltas
past ``ANSWER_MIRROR_MAX_BYTES`` (the finish frame carries the whole text) and its stream expires
``ANSWER_REPLAY_SECONDS`` after its last frame. The number of detached answers is a metric.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from common import redis
from common.aio import per_loop
from monitoring import metrics

from . import protocol
from .answering import STOPPED, Ending
from .models import Message

logger = logging.getLogger(__name__)
Listener = Callable[[protocol.OutgoingFrame], Awaitable[None]]
REQUESTS_CHANNEL = "docchat:answers"  # {"op": "follow" | "stop", "answer_id": ..., "user_id": ...}
ASK_AGAIN_EVERY = 2.0  # a follower repeats its mirror request (pub/sub may drop one)
CHECK_DATABASE_EVERY = 2.0  # while no frame comes, a follower looks for the answer's final state
SERVER_RESTART: Ending = (Message.Status.INTERRUPTED, "server_restart")
DETACHED_LIMIT: Ending = (Message.Status.STOPPED, "detached_limit")


def stream_key(answer_id: int) -> str:
    return f"docchat:answer:{answer_id}"


class LiveAnswer:
    """One answer being written: its log so far, its listeners, and why it was cancelled if it was."""

    def __init__(self, user_id: int, answer_id: int) -> None:
        self.user_id = user_id
        self.answer_id = answer_id
        self.listeners: list[Listener] = []  # sockets of this process following it
        # Its frames for the Redis stream a follower in another process reads (None at the end).
        self.mirror: asyncio.Queue[protocol.OutgoingFrame | None] | None = None
        self.task: asyncio.Task | None = None
        self.finished = False
        self.cancelling = False
        self.detached_since: float | None = None  # when its last listener went away
        # Cancelled without a stated reason (the loop closing under it): it did not finish.
        self.ending: Ending = (Message.Status.INTERRUPTED, "interrupted")
        self._log: list[protocol.OutgoingFrame] = []
        self._text: list[str] = []  # the deltas so far, when the log ends with text
        self._lock = asyncio.Lock()  # a replay and the next frame never interleave

    @property
    def replayable(self) -> bool:
        """Running, or finished with its ``finish`` frame at hand (else the database has it)."""
        return not self.finished or self._ends_with_finish()

    def _ends_with_finish(self) -> bool:
        return bool(self._log) and self._log[-1]["type"] == "finish"

    def cancelled_as(self) -> Ending:
        return self.ending

    @property
    def detached(self) -> bool:
        return self.detached_since is not None

    def cancel(self, ending: Ending) -> None:
        """Cancel the answer, once: a second cancel (a double click on Stop, the shutdown after a
        stop) would hit it while it saves its final state and lose its ``finish`` frame."""
        if self.task is not None and not self.task.done() and not self.cancelling:
            self.cancelling = True
            self.ending = ending
            self.task.cancel()

    async def publish(self, frame: protocol.OutgoingFrame) -> None:
        """Record ``frame`` and send it to every listener (the answer's ``send``)."""
        if frame["type"] == "error":
            metrics.record_error(frame["code"])  # once, however many listen (or none)
        async with self._lock:
            self._record(frame)
            if self.mirror is not None:
                self.mirror.put_nowait(frame)  # the answer never waits for Redis
            for listener in list(self.listeners):
                await listener(frame)

    def open_mirror(self) -> asyncio.Queue[protocol.OutgoingFrame | None] | None:
        """A queue of this answer's frames for a Redis stream: ``resume`` and the answer so far at
        once, then each new frame, then None when it ends. None if one is open already (one
        stream per answer serves every follower)."""
        if self.mirror is not None or self.finished:
            return None
        # No await from here to the end: no frame can slip between the replay and the next one.
        self.mirror = asyncio.Queue()
        for frame in self._replay():
            self.mirror.put_nowait(frame)
        return self.mirror

    def ended(self) -> None:
        self.finished = True
        self.listeners.clear()
        if self.mirror is not None:
            self.mirror.put_nowait(None)

    async def follow(self, listener: Listener) -> None:
        """Replay the answer so far to ``listener`` (after a ``resume``), then keep it listening
        until the answer finishes; a finished answer is its ``finish`` frame alone."""
        async with self._lock:
            if self.finished:
                if self._ends_with_finish():
                    await listener(self._log[-1])  # it holds the whole answer
                return
            for frame in self._replay():
                await listener(frame)
            self.listeners.append(listener)

    def _record(self, frame: protocol.OutgoingFrame) -> None:
        if frame["type"] == "delta":
            self._text.append(frame["text"])
            return
        self._close_text()
        if frame["type"] == "queued" and self._log and self._log[-1]["type"] == "queued":
            self._log[-1] = frame  # only the latest queue position matters
        else:
            self._log.append(frame)
        if frame["type"] == "finish":
            self.finished = True

    def _close_text(self) -> None:
        if self._text:
            self._log.append(protocol.delta_frame(self.answer_id, "".join(self._text)))
            self._text.clear()

    def _replay(self) -> list[protocol.OutgoingFrame]:
        """``resume``, then the answer so far: what a follower is sent before the next frame."""
        text = [protocol.delta_frame(self.answer_id, "".join(self._text))] if self._text else []
        return [protocol.resume_frame(self.answer_id), *self._log, *text]


class LiveAnswers:
    """This event loop's answers in progress (and recently finished), by id."""

    def __init__(self) -> None:
        self.answers: dict[int, LiveAnswer] = {}
        self.shared = redis.async_client() if settings.REDIS_URL else None
        self.listening: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()  # strong references to mirror tasks

    def open(self, user_id: int, answer_id: int, listener: Listener) -> LiveAnswer:
        """Register a new answer with its first listener (before its ``ack`` is sent, so a follower
        arriving meanwhile finds it); ``run`` starts it."""
        live = LiveAnswer(user_id, answer_id)
        live.listeners.append(listener)
        self.answers[answer_id] = live
        return live

    def run(self, live: LiveAnswer, work: Coroutine[Any, Any, object]) -> None:
        live.task = asyncio.get_running_loop().create_task(self._run(live, work))
        self._listen_for_requests()

    async def _run(self, live: LiveAnswer, work: Coroutine[Any, Any, object]) -> None:
        try:
            await work
        finally:
            live.ended()
            self._reattached(live)
            asyncio.get_running_loop().call_later(settings.ANSWER_REPLAY_SECONDS, self._forget, live)

    def discard(self, live: LiveAnswer) -> None:
        """An answer opened but never run (its socket was cancelled before its ack went out)."""
        live.ended()
        self._reattached(live)
        self._forget(live)

    def _forget(self, live: LiveAnswer) -> None:
        if self.answers.get(live.answer_id) is live:
            del self.answers[live.answer_id]

    def get(self, user_id: int, answer_id: int) -> LiveAnswer | None:
        live = self.answers.get(answer_id)
        return live if live is not None and live.user_id == user_id else None

    async def attach(self, live: LiveAnswer, listener: Listener) -> None:
        self._reattached(live)
        await live.follow(listener)

    def _reattached(self, live: LiveAnswer) -> None:
        if live.detached:
            live.detached_since = None
            metrics.answer_reattached()

    def detach(self, live: LiveAnswer, listener: Listener, *, capped: bool = True) -> None:
        """``listener`` (a socket) went away; the answer runs on. If nobody listens any more, the
        user's answers still detached ``DETACHED_ANSWER_GRACE_SECONDS`` later are capped (a
        network blip does not stop anything; ``capped=False`` when the server is going down, whose
        shutdown interrupts them all)."""
        if listener in live.listeners:
            live.listeners.remove(listener)
        if live.listeners or live.finished or live.detached or live.mirror is not None:
            return
        live.detached_since = time.monotonic()
        metrics.answer_detached()
        if capped:
            grace = settings.DETACHED_ANSWER_GRACE_SECONDS
            asyncio.get_running_loop().call_later(grace, self._cap_detached, live.user_id, grace)

    def _cap_detached(self, user_id: int, grace: float) -> None:
        """Stop the user's newest answers detached for ``grace`` seconds beyond the cap."""
        settled = time.monotonic() - grace
        detached = sorted(
            (live for live in self.running() if live.user_id == user_id and live.detached and not live.cancelling),
            key=lambda live: live.detached_since or 0.0,
        )
        for live in detached[settings.MAX_DETACHED_ANSWERS_PER_USER :]:
            if (live.detached_since or 0.0) <= settled:
                logger.info("answer %s stopped: user %s left too many answers running", live.answer_id, user_id)
                live.cancel(DETACHED_LIMIT)

    def running(self) -> list[LiveAnswer]:
        return [live for live in self.answers.values() if not live.finished]

    def stop(self, user_id: int, answer_id: int) -> bool:
        """Cancel the user's answer if it runs here (``stop``); False if it does not."""
        live = self.get(user_id, answer_id)
        if live is None or live.finished:
            return False
        live.cancel(STOPPED)
        return True

    async def interrupt_all(self) -> None:
        """The server is going down: every answer still running ends ``interrupted`` with its
        partial text saved."""
        running = self.running()
        for live in running:
            live.cancel(SERVER_RESTART)
        await asyncio.gather(*(live.task for live in running if live.task), return_exceptions=True)
        if running:
            logger.warning("%s answer(s) interrupted by the server shutting down", len(running))

    # --- other processes (REDIS_URL) ---------------------------------------------------------------
    async def request(self, op: str, user_id: int, answer_id: int) -> None:
        """Ask the process writing the answer to ``follow`` (mirror it) or ``stop`` it."""
        if self.shared is None:
            return
        message = json.dumps({"op": op, "user_id": user_id, "answer_id": answer_id})
        try:
            await self.shared.publish(REQUESTS_CHANNEL, message)
        except RedisError:
            logger.warning("could not publish a %s request for answer %s", op, answer_id)

    def _listen_for_requests(self) -> None:
        if self.shared is not None and (self.listening is None or self.listening.done()):
            self.listening = asyncio.get_running_loop().create_task(
                redis.listen(
                    self.shared,
                    {REQUESTS_CHANNEL: self._on_request},
                    lambda: bool(self.running()),
                    what="answer requests",
                )
            )
            # An answer that started while the subscription was winding down needs a new one.
            self.listening.add_done_callback(self._listen_again_if_needed)

    def _listen_again_if_needed(self, _: asyncio.Task) -> None:
        if self.running():
            self._listen_for_requests()

    def _on_request(self, data: bytes) -> None:
        try:
            request = json.loads(data)
            op, live = request["op"], self.get(int(request["user_id"]), int(request["answer_id"]))
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed answer request on %s", REQUESTS_CHANNEL)
            return
        if live is None or live.finished:
            return
        if op == "stop":
            live.cancel(STOPPED)
        elif op == "follow" and (queue := live.open_mirror()) is not None:
            self._reattached(live)  # someone follows it from another process
            task = asyncio.get_running_loop().create_task(self._mirror(live, queue))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _mirror(self, live: LiveAnswer, queue: asyncio.Queue[protocol.OutgoingFrame | None]) -> None:
        """Write the answer's frames to its Redis stream until it ends."""
        assert self.shared is not None
        key, sent, ended = stream_key(live.answer_id), 0, False
        try:
            while not ended:
                frames = [await queue.get()]
                while not queue.empty():
                    frames.append(queue.get_nowait())
                async with self.shared.pipeline(transaction=False) as pipe:
                    for frame in frames:
                        if frame is None:
                            ended = True
                            continue
                        data = json.dumps(frame)
                        if frame["type"] == "delta" and sent + len(data) > settings.ANSWER_MIRROR_MAX_BYTES:
                            continue  # the finish frame brings the rest of the text
                        sent += len(data)
                        pipe.xadd(key, {"frame": data})
                    pipe.expire(key, int(settings.ANSWER_REPLAY_SECONDS))
                    await pipe.execute()
        except RedisError:
            logger.warning(
                "mirroring answer %s to Redis failed; its followers fall back to the database", live.answer_id
            )
            live.mirror = None  # a later follow request may open another

    async def follow_elsewhere(
        self, user_id: int, answer_id: int, send: Listener, final_state: Callable[[], Awaitable[Message | None]]
    ) -> None:
        """Follow an answer pending in the database that does not run here: through its Redis
        stream (asking its process to mirror it), and in any case until the database holds its
        final state (its process finished it, stopped and saved it, or was found dead)."""
        last_id, next_request, next_check = "0", 0.0, 0.0
        block_ms = max(1, int(min(500, settings.REDIS_TIMEOUT * 500)))  # within the socket timeout
        while True:
            if self.shared is not None:
                if time.monotonic() >= next_request:
                    await self.request("follow", user_id, answer_id)
                    next_request = time.monotonic() + ASK_AGAIN_EVERY
                try:
                    reply = await self.shared.xread({stream_key(answer_id): last_id}, count=500, block=block_ms)
                except RedisError:
                    reply = None
                    await asyncio.sleep(1.0)  # Redis is down: back-off; the database is the news
                for _, entries in reply or ():
                    for entry_id, fields in entries:
                        last_id = entry_id
                        frame = json.loads(fields[b"frame"])
                        await send(frame)
                        if frame["type"] == "finish":
                            return
                if reply:
                    continue
            else:
                await asyncio.sleep(CHECK_DATABASE_EVERY)  # no Redis: the database is the only news
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + CHECK_DATABASE_EVERY
                final = await final_state()
                if final is not None:
                    await send(protocol.finish_frame(final))
                    return


live_answers = per_loop(LiveAnswers)


class InterruptAnswersOnShutdown:
    """ASGI lifespan handler: when the server shuts down (uvicorn: after its sockets have closed),
    this process's answers still running are interrupted and saved before it exits. Other scopes
    pass through."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await live_answers().interrupt_all()
                await send({"type": "lifespan.shutdown.complete"})
                return
