"""ASGI middleware of the chat socket."""

from __future__ import annotations

from channels.auth import AuthMiddleware
from channels.sessions import CookieMiddleware, InstanceSessionWrapper, SessionMiddleware


class SocketSessionMiddleware(SessionMiddleware):
    """Channels' ``SessionMiddleware`` minus its wrapper around every ``send``: that wrapper only
    ever acts on ``http.response.start`` (to save the session and set its cookie), which a WebSocket
    never sends, yet it inspected the session for each of an answer's frames."""

    async def __call__(self, scope, receive, send):
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        return await self.inner(wrapper.scope, receive, send)


def SocketAuthMiddlewareStack(inner):
    """Channels' ``AuthMiddlewareStack`` for sockets: the session's user in ``scope["user"]``."""
    return CookieMiddleware(SocketSessionMiddleware(AuthMiddleware(inner)))
