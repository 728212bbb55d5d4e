"""Open chat sockets: a cap per user, and closing a session's sockets when it signs out.

Each process keeps a registry of its open sockets. With REDIS_URL the cap counts every process's
sockets: a sorted set per user whose members are sockets, scored by when their process last said
they are open (every ``REFRESH_SECONDS``), so the sockets of a process that died stop counting
after ``STALE_SECONDS``. A sign-out is published on one Redis channel that each process listens
to (one subscription per process, not per socket: chats do not depend on Redis), and closes that
session's sockets in every process; without Redis, in this one. If Redis is unreachable the cap
falls back to this process's count (``common.redis``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Protocol

from django.conf import settings
from redis.exceptions import RedisError

from common import redis
from common.aio import per_loop
from common.redis import LocalFallback

if TYPE_CHECKING:
    from .protocol import OutgoingFrame

logger = logging.getLogger(__name__)
SIGN_OUT_CHANNEL = "docchat:sign-out"
REFRESH_SECONDS = 20.0
STALE_SECONDS = 3 * REFRESH_SECONDS


class Socket(Protocol):
    @property
    def user_id(self) -> int: ...

    session_key: str
    socket_id: str

    async def signed_out(self) -> None:
        """Tell the client its session ended, and close (4401)."""

    async def send_frame(self, frame: OutgoingFrame) -> None:
        """Send ``frame`` unless the client has gone (never raises for that)."""


class Sockets:
    """This event loop's open chat sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.by_user: defaultdict[int, set[Socket]] = defaultdict(set)
        self.shared = redis.async_client() if settings.REDIS_URL else None
        self.fallback = LocalFallback("per-user socket limits")
        self.process = uuid.uuid4().hex[:12]
        self.background: asyncio.Task | None = None
        _registries.add(self)

    def new_id(self) -> str:
        return f"{self.process}:{uuid.uuid4().hex[:12]}"

    async def open(self, socket: Socket) -> bool:
        """Count ``socket`` for its user; False (and not counted) when the user is at the cap."""
        allowed: bool | None = None
        if self.shared is not None and not self.fallback.active:
            try:
                allowed = await self._open_shared(self.shared, socket)
            except RedisError:
                self.fallback.start()
        if allowed is None:  # no Redis, or not reachable: this process's count
            allowed = len(self.by_user.get(socket.user_id, ())) < settings.WS_MAX_SOCKETS_PER_USER
        if allowed:
            self.by_user[socket.user_id].add(socket)
            self._ensure_background()
        return allowed

    async def close(self, socket: Socket) -> None:
        sockets = self.by_user.get(socket.user_id)
        if sockets is None or socket not in sockets:
            return
        sockets.discard(socket)
        if not sockets:
            del self.by_user[socket.user_id]
        if self.shared is not None:
            try:
                await self.shared.zrem(_key(socket.user_id), socket.socket_id)
            except RedisError:
                pass  # the member goes stale and stops counting on its own

    def close_session(self, session_key: str) -> int:
        """Close this process's sockets of ``session_key``; returns how many."""
        doomed = [s for sockets in self.by_user.values() for s in sockets if s.session_key == session_key]
        for socket in doomed:
            self.loop.create_task(socket.signed_out())
        return len(doomed)

    async def _open_shared(self, client, socket: Socket) -> bool:
        key, now = _key(socket.user_id), time.time()
        async with client.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now - STALE_SECONDS)
            pipe.zadd(key, {socket.socket_id: now})
            pipe.zcard(key)
            pipe.expire(key, int(STALE_SECONDS) * 2)
            _, _, count, _ = await pipe.execute()
        if count > settings.WS_MAX_SOCKETS_PER_USER:
            await client.zrem(key, socket.socket_id)
            return False
        return True

    def _ensure_background(self) -> None:
        if self.shared is not None and (self.background is None or self.background.done()):
            self.background = self.loop.create_task(self._keep_shared_state(self.shared))

    async def _keep_shared_state(self, client) -> None:
        """While sockets are open: say they still are, and hear sign-outs from other processes."""
        next_refresh = 0.0

        async def refresh_when_due() -> None:
            nonlocal next_refresh
            if time.monotonic() >= next_refresh:
                await self._refresh(client)
                next_refresh = time.monotonic() + REFRESH_SECONDS

        await redis.listen(
            client,
            {SIGN_OUT_CHANNEL: lambda data: self.close_session(data.decode())},
            lambda: bool(self.by_user),
            what="socket registry",
            tick=refresh_when_due,
            retry_in=REFRESH_SECONDS / 4,
        )

    async def _refresh(self, client) -> None:
        now = time.time()
        async with client.pipeline(transaction=False) as pipe:
            for user_id, sockets in list(self.by_user.items()):
                pipe.zadd(_key(user_id), {s.socket_id: now for s in sockets})
                pipe.expire(_key(user_id), int(STALE_SECONDS) * 2)
            await pipe.execute()


def _key(user_id: int) -> str:
    return f"docchat:sockets:{user_id}"


_registries: weakref.WeakSet[Sockets] = weakref.WeakSet()
sockets = per_loop(Sockets)


def sign_out(session_key: str | None) -> None:
    """Close the sockets of ``session_key`` in every process (called from the logout view's
    thread): this process's directly, the others' through Redis when configured."""
    if not session_key:
        return
    for registry in list(_registries):
        if not registry.loop.is_closed():
            registry.loop.call_soon_threadsafe(registry.close_session, session_key)
    if settings.REDIS_URL:
        try:
            redis.sync_client().publish(SIGN_OUT_CHANNEL, session_key)
        except Exception:
            logger.warning("could not publish a sign-out to the other server processes", exc_info=True)
