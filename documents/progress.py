"""Progress of personal documents, told to whoever listens: Postgres ``NOTIFY`` on one channel.

The pipeline runs in the worker, another process than the chat servers (and must work without
Redis), so it announces each step where it writes it — status changes, each engine call's
counters, ready, failed — and a deletion. Only documents of a personal collection are announced
(the statement finds nothing for the others) and each notice names their owner, to whose chat
sockets a server forwards it (``chat/document_feed.py``). A notice is delivered when the
transaction that wrote the step commits, never for a step rolled back.
"""

from __future__ import annotations

import json

from django.db import connection

CHANNEL = "docchat_documents"
ERROR_CHARS = 300  # a notice is limited to 8000 bytes; an error is one line anyway

# The document as it is now (one statement: it reads what was just written), if it is personal.
_NOTIFY_SQL = f"""
SELECT pg_notify(%s, json_build_object(
    'document_id', d.id, 'user_id', c.personal_of_id, 'title', d.title, 'status', d.status,
    'chunks_done', d.chunks_done, 'chunks_total', d.chunks_total, 'error', left(d.error, {ERROR_CHARS})
)::text)
FROM documents_document d JOIN documents_collection c ON c.id = d.collection_id
WHERE d.id = %s AND c.personal_of_id IS NOT NULL
"""


def notify_progress(document_id: int) -> None:
    """Announce the state of ``document_id`` to its owner, if it is a personal document."""
    with connection.cursor() as cursor:
        cursor.execute(_NOTIFY_SQL, [CHANNEL, document_id])


def notify_deleted(document_id: int, user_id: int) -> None:
    """Announce that the personal document ``document_id`` of ``user_id`` was deleted."""
    event = {"document_id": document_id, "user_id": user_id, "status": "deleted"}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, json.dumps(event)])
