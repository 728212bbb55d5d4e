"""Who processes a document: a Postgres advisory lock per document, held while a pipeline works on it.

Two pipelines never process one document at once (a document queued again while a slow worker
still has it, ``ingest --now`` beside the worker): the second finds the lock taken and leaves the
document to the first. The locks live on a connection of the pipeline's own, in autocommit: the
pipeline's short transactions come and go, and a pooled connection could be handed to someone else
with the lock still on it. A worker that dies loses its connection and with it its locks, which is
how recovery tells an abandoned document from one that is merely slow (``is_claimed``).
"""

from __future__ import annotations

import psycopg
from django.db import connection

# The first key of every lock here ("doc"), so these locks collide with no one else's.
NAMESPACE = 0x646F63


def _key(document_id: int) -> int:
    # The second key is a 32-bit integer; beyond 2**31 documents, two could share a lock and one
    # of them would wait for the other to finish, nothing worse.
    return document_id % 2**31


class Claims:
    """The documents one pipeline holds; ``close`` releases them all."""

    def __init__(self) -> None:
        self._conn: psycopg.Connection | None = None
        self.held: set[int] = set()

    def take(self, document_id: int) -> bool:
        """Claim ``document_id`` for this pipeline (True), unless another one holds it (False)."""
        if document_id in self.held:
            return True
        locked = self._connected().execute("SELECT pg_try_advisory_lock(%s, %s)", (NAMESPACE, _key(document_id)))
        row = locked.fetchone()
        if row and row[0]:
            self.held.add(document_id)
            return True
        return False

    def release(self, document_id: int) -> None:
        if document_id in self.held:
            self.held.discard(document_id)
            self._connected().execute("SELECT pg_advisory_unlock(%s, %s)", (NAMESPACE, _key(document_id)))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the server releases every lock of the session
            self._conn = None
        self.held.clear()

    def _connected(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(**connection.get_connection_params(), autocommit=True)
        return self._conn


def is_claimed(document_id: int) -> bool:
    """Whether a live pipeline (in any process) holds ``document_id`` now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::int8 = %s AND objid::int8 = %s AND objsubid = 2)",
            (NAMESPACE, _key(document_id)),
        )
        return bool(cursor.fetchone()[0])
