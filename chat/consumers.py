"""The chat WebSocket: parse → check → do → reply. The answer itself runs in ``answering``.

State kept on the consumer is per connection (each WebSocket gets its own instance): the user and
the answer tasks it started. Answers run as tasks so ``stop`` and disconnect can cancel them, and
the cancellation reaches the HTTP call to the LLM.
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
from .actions import Asked, SignedOut, access_answer, do_ask
from .answering import answer_question
from .document_feed import document_feed
from .errors import ChatError, InternalError
from .janitor import janitor
from .models import Message
from .presence import sockets
from .protocol import ProtocolError, check_frame
from .ratelimit import FrameBudget, question_limiter
from .slots import user_generations

logger = logging.getLogger(__name__)
CLOSE_UNAUTHENTICATED = 4401
CLOSE_POLICY = 1008  # WebSocket's "policy violation": too many frames, or too many sockets


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
        self.tasks: dict[int, asyncio.Task] = {}
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
            # Server shutdown cancels the consumer without a disconnect: stop the answers here too,
            # so each is saved as stopped before the process exits.
            await self._stop_answers()

    async def disconnect(self, code: int) -> None:
        await self._stop_answers()

    async def _stop_answers(self) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            metrics.connection_closed()
        if getattr(self, "registered", False):
            self.registered = False
            await asyncio.shield(sockets().close(self))
        self.closed = True
        tasks = list(getattr(self, "tasks", {}).values())
        for task in tasks:
            task.cancel()
        # Wait so every answer is persisted as stopped before the consumer goes away.
        await asyncio.gather(*tasks, return_exceptions=True)

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
        try:
            await question_limiter().check(self.user.pk)
            recheck = time.monotonic() - self.signed_in_at >= settings.SESSION_RECHECK_SECONDS
            asked = await db_async(do_ask)(
                self.session_key if recheck else None,
                self.user,
                frame["conversation_id"],
                frame["text"],
                frame["client_id"],
                frame["collection_ids"],
            )
            if recheck:
                self.signed_in_at = time.monotonic()
            await self.send_frame(
                protocol.ack_frame(
                    frame["client_id"], asked.question_id, asked.answer_id, asked.conversation_id, asked.duplicate
                )
            )
        except BaseException:
            await release()
            raise
        if asked.duplicate:
            await release()
            await self._replay(asked)
            return
        self._start_answer(asked, release)

    async def handle_stop(self, frame: protocol.StopFrame) -> None:
        task = self.tasks.get(frame["answer_id"])
        if task is None:
            # Not running here: make sure it is the user's (else not found), then nothing to do.
            await db_async(access_answer)(self.user, frame["answer_id"])
            return
        task.cancel()

    async def handle_ping(self, frame: protocol.PingFrame) -> None:
        await self.send_frame(protocol.pong_frame())

    def _start_answer(self, asked: Asked, release: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(asked, release))
        self.tasks[asked.answer_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(asked.answer_id, None))

    async def _answer(self, asked: Asked, release: Callable[[], Awaitable[None]]) -> None:
        try:
            await answer_question(self.user, asked, self.send_frame)
        finally:
            await asyncio.shield(release())  # the user's place, also when the answer is stopped

    async def _replay(self, asked: Asked) -> None:
        """A resent question: show the stored answer if it has finished."""
        if asked.answer_id in self.tasks or asked.answer_status == Message.Status.PENDING:
            return
        answer = await db_async(access_answer)(self.user, asked.answer_id)
        await self.send_frame(protocol.finish_frame(answer))

    async def send_frame(self, frame: protocol.OutgoingFrame) -> None:
        """Send unless the client has gone; a vanished client is not an error for the answer."""
        if frame["type"] == "error":
            metrics.record_error(frame["code"])
        if self.closed:
            return
        try:
            await self.send_json(frame)
        except Exception:
            self.closed = True
            logger.info("client went away while sending %s", frame.get("type"))
