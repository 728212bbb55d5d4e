"""Uploads refused by their size before their body is received.

Django's ASGI handler reads a request's whole body (spooled to a temporary file) before any view
runs, and uvicorn sets no limit of its own: a view's size check comes after the bytes have been
received and stored. Every signed-in user may upload to ``/api/documents/``, so this ASGI
middleware refuses a larger body there first: by its declared ``Content-Length``, or, for a body
sent without one, as soon as more than the limit has arrived.
"""

from __future__ import annotations

import json

from django.conf import settings

from .personal import FileTooLarge

UPLOAD_PATH = "/api/documents/"
MULTIPART_OVERHEAD = 1024 * 1024  # the multipart framing around one file, generously


class BodyTooLarge(Exception):
    pass


def upload_body_limit() -> int:
    return settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD


class UploadBodyLimit:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(UPLOAD_PATH):
            await self.app(scope, receive, send)
            return
        limit = upload_body_limit()
        if _declared_length(scope) > limit:
            await _refuse(send)
            return
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:  # raised while Django read the body, before any response began
            await _refuse(send)


def _declared_length(scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # Django answers a malformed length itself
    return 0


async def _refuse(send) -> None:
    message = f"Files are limited to {settings.MAX_UPLOAD_BYTES / 1024**2:g} MB."
    body = json.dumps({"error": message, "code": FileTooLarge.code}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": FileTooLarge.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
