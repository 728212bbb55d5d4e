"""The chat WebSocket: parse → check → do → reply. The answer itself runs in ``answering``.

State kept on the consumer is per connection (each WebSocket gets its own instance): the user and
the answers it listens to. Answers run as tasks of their own (``live``): a disconnect only stops
the listening, so an answer survives a network blip or a closed tab and the client that comes back
follows it; ``stop`` cancels it, and the cancellation reaches the HTTP call to the LLM.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from common.db import db_async
from documents import relevance
from monitoring import metrics

from . import protocol
from .actions import Asked, SignedOut, access_answer, do_ask, finished_answer
from .answering import answer_question
from .document_feed import document_feed
from .errors import ChatError, InternalError
from .janitor import janitor
from .live import LiveAnswer, live_answers
from .models import Message
from .presence import sockets
from .protocol import ProtocolError, check_frame
from .ratelimit import FrameBudget, question_limiter
from .slots import user_generations

logger = logging.getLogger(__name__)
CLOSE_UNAUTHENTICATED = 4401
CLOSE_POLICY = 1008  # WebSocket's "policy violation": too many frames, or too many sockets
CLOSE_SERVER_RESTART = 1012  # uvicorn closes every socket with it when the server shuts down


class TooManyFrames(ChatError):
    code = "too_many_frames"

    def __init__(self) -> None:
        super().__init__(
            user_message=f"This connection sent more than {settings.WS_FRAMES_PER_SECOND:g} frames per second "
            "for too long and was closed."
        )


class TooManySockets(ChatError):
    code = "too_many_sockets"

    def __init__(self) -> None:
        super().__init__(
            user_message=f"You have {settings.WS_MAX_SOCKETS_PER_USER} chat connections open already; "
            "close a tab and reload."
        )


class ChatConsumer(AsyncJsonWebsocketConsumer):
    # Deltas go straight to this socket, never through the channel layer, so a chat connection
    # does not subscribe to it: no Redis listener per connection, and a Redis outage cannot
    # break open chats. (An alias that is not configured gives no layer.)
    channel_layer_alias = "chat-direct"

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.following: dict[int, LiveAnswer] = {}  # answers of this process this socket listens to
        self.elsewhere: dict[int, asyncio.Task] = {}  # answers it follows from other processes
        self.closed = False
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        self.session_key = self.scope["session"].session_key
        self.signed_in_at = time.monotonic()  # the middleware just checked the session
        self.socket_id = sockets().new_id()
        self.budget = FrameBudget(settings.WS_FRAMES_PER_SECOND, settings.WS_FRAME_BURST)
        relevance.warm_up()  # a fresh server starts loading the model with its first chat
        await self.accept()
        if not await sockets().open(self):
            await self._refuse(TooManySockets(), CLOSE_POLICY)
            return
        self.registered = True
        metrics.connection_opened()
        janitor().ensure_running()
        document_feed().ensure_running()
        self.counted = True

    @property
    def user_id(self) -> int:
        return self.user.pk

    async def signed_out(self, error: SignedOut | None = None, client_id: str | None = None) -> None:
        """The session ended (sign-out here or in another process, password change, deactivation)."""
        if not self.closed:
            await self._refuse(error or SignedOut(), CLOSE_UNAUTHENTICATED, client_id)

    async def _refuse(self, error: ChatError, code: int, client_id: str | None = None) -> None:
        """Tell the client why, then close the socket with ``code``."""
        await self.send_frame(protocol.error_frame(error, client_id=client_id))
        self.closed = True
        await self.close(code=code)

    async def dispatch(self, message) -> None:
        # Channels closes stale DB connections before every message through its single sync
        # thread; our DB calls (common.db) close their own, so that hop is skipped.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also when the server cancels the consumer without a disconnect: let go of the answers
            # (they run on; the server's shutdown interrupts and saves them).
            self._leave(capped=False)
            await self._unregister()

    async def disconnect(self, code: int) -> None:
        self._leave(capped=code != CLOSE_SERVER_RESTART)
        await self._unregister()

    def _leave(self, capped: bool) -> None:
        """Stop listening to answers; they run on, detached (``live``)."""
        self.closed = True
        for live in getattr(self, "following", {}).values():
            live_answers().detach(live, self.send_frame, capped=capped)
        self.following = {}
        for task in getattr(self, "elsewhere", {}).values():
            task.cancel()

    async def _unregister(self) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            metrics.connection_closed()
        if getattr(self, "registered", False):
            self.registered = False
            await asyncio.shield(sockets().close(self))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        client_id: str | None = None
        if self.closed:
            return
        if not self.budget.take():
            await self._refuse(TooManyFrames(), CLOSE_POLICY)
            return
        try:
            frame = check_frame(text_data, bytes_data)
            if frame["type"] == "ask":
                client_id = frame["client_id"]
                await self.handle_ask(frame)
            elif frame["type"] == "stop":
                await self.handle_stop(frame)
            elif frame["type"] == "follow":
                await self.follow(frame["answer_id"])
            else:
                await self.handle_ping(frame)
        except SignedOut as exc:
            await self.signed_out(exc, client_id)
        except ChatError as exc:
            client_id = exc.client_id if isinstance(exc, ProtocolError) else client_id
            await self.send_frame(protocol.error_frame(exc, client_id=client_id))
        except Exception:
            logger.exception("chat frame failed")
            await self.send_frame(protocol.error_frame(InternalError(), client_id=client_id))

    async def handle_ask(self, frame: protocol.AskFrame) -> None:
        release = await user_generations().acquire(self.user.pk)
        asked: Asked | None = None
        try:
            await question_limiter().check(self.user.pk)
            recheck = time.monotonic() - self.signed_in_at >= settings.SESSION_RECHECK_SECONDS
            asked = await db_async(do_ask)(self.session_key if recheck else None, self.user, frame)
            if recheck:
                self.signed_in_at = time.monotonic()
            if not asked.duplicate:  # registered before the ack: a follower may come at once
                self.following[asked.answer_id] = live_answers().open(self.user_id, asked.answer_id, self.send_frame)
            await self.send_frame(
                protocol.ack_frame(
                    frame["client_id"], asked.question_id, asked.answer_id, asked.conversation_id, asked.duplicate
                )
            )
        except BaseException:
            await release()
            if asked is not None and not asked.duplicate and asked.answer_id in self.following:  # never to run
                live_answers().discard(self.following.pop(asked.answer_id))
            raise
        if asked.duplicate:
            await release()
            await self.follow(asked.answer_id)  # a resent question: its answer, so far or finished
            return
        self._start_answer(asked, release)

    async def handle_stop(self, frame: protocol.StopFrame) -> None:
        if live_answers().stop(self.user_id, frame["answer_id"]):
            return
        # Not running here: make sure it is the user's (else not found), then ask the process
        # writing it, if any, to stop it.
        answer = await db_async(access_answer)(self.user, frame["answer_id"])
        if answer.status == Message.Status.PENDING:
            await live_answers().request("stop", self.user_id, answer.pk)

    def _unfollow(self, answer_id: int) -> None:
        live = self.following.pop(answer_id, None)
        if live is not None and self.send_frame in live.listeners:
            live.listeners.remove(self.send_frame)
        task = self.elsewhere.pop(answer_id, None)
        if task is not None:
            task.cancel()

    async def handle_ping(self, frame: protocol.PingFrame) -> None:
        await self.send_frame(protocol.pong_frame())

    def _start_answer(self, asked: Asked, release: Callable[[], Awaitable[None]]) -> None:
        self.following = {key: live for key, live in self.following.items() if not live.finished}
        live = self.following[asked.answer_id]
        live_answers().run(live, self._answer(live, asked, release))

    async def _answer(self, live: LiveAnswer, asked: Asked, release: Callable[[], Awaitable[None]]) -> None:
        try:
            await answer_question(self.user, asked, live.publish, live.cancelled_as)
        finally:
            await asyncio.shield(release())  # the user's place, also when the answer is stopped

    async def follow(self, answer_id: int) -> None:
        """Send the user's answer ``answer_id`` so far, then the rest as it is written: from this
        process, from the process writing it, or from the database once it has finished."""
        # Asked again by a socket that listens already (the page re-rendered the conversation):
        # replay from the start all the same, so the page has the whole text.
        self._unfollow(answer_id)
        live = live_answers().get(self.user_id, answer_id)
        if live is not None and live.replayable:
            self.following[answer_id] = live
            await live_answers().attach(live, self.send_frame)
            return
        answer = await db_async(access_answer)(self.user, answer_id)
        if answer.status != Message.Status.PENDING:
            await self.send_frame(protocol.finish_frame(answer))
            return
        await self.send_frame(protocol.resume_frame(answer_id))
        final_state = db_async(finished_answer)
        task = asyncio.get_running_loop().create_task(
            live_answers().follow_elsewhere(
                self.user_id, answer_id, self.send_frame, lambda: final_state(self.user, answer_id)
            )
        )
        self.elsewhere[answer_id] = task
        task.add_done_callback(
            lambda done: self.elsewhere.pop(answer_id) if self.elsewhere.get(answer_id) is done else None
        )

    async def send_frame(self, frame: protocol.OutgoingFrame) -> None:
        """Send unless the client has gone; a vanished client is not an error for the answer."""
        if frame["type"] == "error" and "answer_id" not in frame:  # an answer's errors: ``live`` counts them
            metrics.record_error(frame["code"])
        if self.closed:
            return
        try:
            await self.send_json(frame)
        except Exception:
            self.closed = True
            logger.info("client went away while sending %s", frame.get("type"))
