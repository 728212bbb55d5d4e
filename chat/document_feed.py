"""Progress of a user's own documents, pushed to their chat sockets in this process.

The worker announces each step of a personal document with Postgres ``NOTIFY``
(``documents/progress.py``); each server process (each event loop) LISTENs on one connection of
its own — outside the pool, which would drop the subscription — and forwards a ``document`` frame
to the owner's sockets here (``presence.sockets().by_user``). No Redis is needed, and every
process hears every notice, so whichever process holds the owner's sockets tells them.

Started by the first chat connection (never at import), it stops when the process has no chat
socket left, so no connection is held for nobody. A dropped connection is opened again with
back-off; notices sent meanwhile are lost, which the page makes up for by reloading the list when
its socket (re)connects.
"""

from __future__ import annotations

import asyncio
import json
import logging

import psycopg
from django.db import connection

from common.aio import per_loop
from common.db import db_async
from documents.progress import CHANNEL

from . import protocol
from .presence import sockets

logger = logging.getLogger(__name__)
CHECK_SOCKETS_EVERY = 1.0  # how soon the listener notices that the last socket closed
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0


class DocumentFeed:
    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.backoff = BACKOFF_FIRST

    def ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        self.backoff = BACKOFF_FIRST
        # Checked again after each listen: a socket may open while the last one's listener closes.
        while sockets().by_user:
            try:
                await self._listen()
                continue  # no socket was left
            except (psycopg.Error, OSError) as exc:
                logger.warning("document progress listener lost the database (%s); again in %.1f s", exc, self.backoff)
            except Exception:
                logger.exception("document progress listener failed; again in %.1f s", self.backoff)
            await asyncio.sleep(self.backoff)  # back-off before connecting again
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    async def _listen(self) -> None:
        params = await db_async(connection.get_connection_params)()
        params.pop("cursor_factory", None)  # Django's is a sync cursor
        # Told apart from the pool's connections in pg_stat_activity (and in what counts them).
        params["application_name"] = f"{params.get('application_name') or 'docchat'}-listener"[:63]
        async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.backoff = BACKOFF_FIRST
            logger.info("listening for document progress")
            while sockets().by_user:
                async for notice in conn.notifies(timeout=CHECK_SOCKETS_EVERY):
                    await self._forward(notice.payload)

    async def _forward(self, payload: str) -> None:
        try:
            event = json.loads(payload)
            owner, frame = int(event["user_id"]), protocol.document_frame(event)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed document notice: %.200s", payload)
            return
        # In notice order; send_frame never raises for a client that went away.
        await asyncio.gather(*(socket.send_frame(frame) for socket in list(sockets().by_user.get(owner, ()))))


document_feed = per_loop(DocumentFeed)
