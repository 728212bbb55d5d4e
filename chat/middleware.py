"""ASGI middleware of the chat socket."""

from __future__ import annotations

from channels.auth import AuthMiddleware, get_user
from channels.sessions import CookieMiddleware, InstanceSessionWrapper, SessionMiddleware

from common.db import db_async

# Channels' own lookup of the session's user (session row, user row, session hash check), without
# its ``database_sync_to_async`` wrapper: that one is thread-sensitive, so every connection of the
# process waited for the others' lookups on one thread.
_session_user = get_user.func


class SocketSessionMiddleware(SessionMiddleware):
    """Channels' ``SessionMiddleware`` minus its wrapper around every ``send``: that wrapper only
    ever acts on ``http.response.start`` (to save the session and set its cookie), which a WebSocket
    never sends, yet it inspected the session for each of an answer's frames."""

    async def __call__(self, scope, receive, send):
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        return await self.inner(wrapper.scope, receive, send)


class SocketAuthMiddleware(AuthMiddleware):
    """Channels' ``AuthMiddleware`` with the user looked up on the DB thread pool (``common.db``),
    so simultaneous connections (a reconnect storm) are authenticated side by side."""

    async def resolve_scope(self, scope):
        scope["user"]._wrapped = await db_async(_session_user)(scope)


def SocketAuthMiddlewareStack(inner):
    """Channels' ``AuthMiddlewareStack`` for sockets: the session's user in ``scope["user"]``."""
    return CookieMiddleware(SocketSessionMiddleware(SocketAuthMiddleware(inner)))
