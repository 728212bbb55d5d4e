"""Hybrid retrieval: pgvector HNSW (cosine) + Postgres full-text, fused by reciprocal rank.

One SQL statement does it all: the access filter (collections the user may read), the vector
candidates (HNSW with an iterative scan, so the filter cannot starve it), the full-text candidates,
the fusion, and only the columns an answer needs. The query vector is sent as a bound binary
parameter (pgvector's psycopg adapter), not as 384 numbers in text. Measured: the ORM version
(three queries, model instances, the vector as text) was the largest single cost of a chat under
load (17 % of the server's GIL time in a 200-chat burst; bench/RESULTS.md).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import psycopg
from django.conf import settings
from django.db import connection, transaction
from pgvector import Vector
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo

RRF_K = 60  # the constant from Cormack et al.; dampens the weight of top ranks
SNIPPET_CHARS = 300
CANDIDATES_PER_HIT = 4  # each half proposes k * 4 chunks to the fusion


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    document_id: int
    title: str
    page: int | None
    section: str
    text: str
    similarity: float  # cosine similarity of the chunk to the query, 1 = identical
    score: float  # fused RRF score used for the ranking
    keyword_match: bool  # found by the full-text query (the words themselves occur)

    def as_source(self, n: int) -> dict:
        source = asdict(self)
        source.pop("text")
        source.pop("keyword_match")
        return {"n": n, **source, "snippet": snippet(self.text)}


def snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"


# Chunks of every document in a collection the user may read (public, owned, or as a member),
# optionally only in some of those collections, except failed documents. Chunks exist only once
# a document was fully ingested; a document being re-processed keeps its old chunks searchable
# until the new ones replace them.
READABLE = """
    readable AS (
        SELECT d.id FROM documents_document d JOIN documents_collection c ON c.id = d.collection_id
        WHERE d.status <> 'failed' AND (%(collections)s::bigint[] IS NULL OR d.collection_id = ANY(%(collections)s)) AND (
            c.is_public OR c.owner_id = %(user)s OR EXISTS (
                SELECT 1 FROM documents_collection_members m WHERE m.collection_id = c.id AND m.user_id = %(user)s
            )
        )
    )"""
# The nearest chunks by cosine distance (the HNSW index; relaxed_order may return them slightly
# out of order, so they are ranked again by their exact distance).
BY_VECTOR = """
    vector_hits AS (
        SELECT ch.id, ch.embedding <=> %(vector)b AS distance FROM documents_chunk ch
        WHERE ch.document_id IN (SELECT id FROM readable)
        ORDER BY ch.embedding <=> %(vector)b LIMIT %(candidates)s
    ),
    by_vector AS (SELECT id, 0 AS half, row_number() OVER (ORDER BY distance, id) AS rank FROM vector_hits)"""
BY_TEXT = """
    text_hits AS (
        SELECT ch.id, ts_rank(ch.search_vector, q) AS relevance
        FROM documents_chunk ch, websearch_to_tsquery('english', %(text)s) q
        WHERE ch.search_vector @@ q AND ch.document_id IN (SELECT id FROM readable)
        ORDER BY relevance DESC, ch.id LIMIT %(candidates)s
    ),
    by_text AS (SELECT id, 1 AS half, row_number() OVER (ORDER BY relevance DESC, id) AS rank FROM text_hits)"""
# Reciprocal-rank fusion, each half's ranks weighted (RETRIEVAL_*_WEIGHT); ties go to the vector
# ranking's order, then the full-text one's.
FUSED = """
    fused AS (
        SELECT id, sum(CASE half WHEN 0 THEN %(vector_weight)s ELSE %(text_weight)s END / (%(rrf_k)s + rank)) AS score, bool_or(half = 1) AS keyword_match,
               min(half * 1000000 + rank) AS first_seen
        FROM ({rankings}) ranked GROUP BY id
        ORDER BY score DESC, first_seen LIMIT %(k)s
    )
SELECT ch.id, ch.document_id, d.title, ch.page, ch.section, ch.text,
       1 - (ch.embedding <=> %(vector)b) AS similarity, f.score, f.keyword_match
FROM fused f JOIN documents_chunk ch ON ch.id = f.id JOIN documents_document d ON d.id = ch.document_id
ORDER BY f.score DESC, f.first_seen"""
# Settings of this transaction only: fail fast rather than hold a pooled connection and the user;
# the index's candidate list; keep scanning until enough readable rows are found.
TUNE = """SELECT set_config('statement_timeout', %(timeout)s, true), set_config('hnsw.ef_search', %(ef)s, true),
       set_config('hnsw.iterative_scan', 'relaxed_order', true)"""


def search(
    user, query_text: str, query_vector: list[float], k: int | None = None, *, collections: Sequence[int] | None = None
) -> list[Hit]:
    """The ``k`` best chunks for the query among those ``user`` may read (in ``collections`` only,
    when given), best first."""
    k = k or settings.RETRIEVAL_TOP_K
    return _hybrid(user, query_text, query_vector, k, vector=True, text=True, collections=collections)


def vector_search(user, query_vector: list[float], k: int) -> list[Hit]:
    """The vector half alone (tests and benchmarks compare the halves with the fusion)."""
    return _hybrid(user, "", query_vector, k, vector=True, text=False)


def text_search(user, query_text: str, query_vector: list[float], k: int) -> list[Hit]:
    """The full-text half alone; ``query_vector`` still gives each hit its similarity."""
    return _hybrid(user, query_text, query_vector, k, vector=False, text=True)


def collection_ids(collections: Sequence[int] | None) -> list[int] | None:
    """``READABLE``'s optional restriction as bound: a list, or NULL for every readable collection."""
    return list(collections) if collections is not None else None


def capped_query(text: str) -> str:
    """The query's last RETRIEVAL_MAX_QUERY_WORDS words: a question, not a pasted page, is looked up
    word by word (the end holds the question itself when a follow-up carries the previous one)."""
    return " ".join(text.split()[-settings.RETRIEVAL_MAX_QUERY_WORDS :])


def hybrid_sql(*, vector: bool = True, text: bool = True) -> str:
    """The statement ``search`` runs (either half may be left out)."""
    halves = [(BY_VECTOR, "by_vector"), (BY_TEXT, "by_text")]
    chosen = [(sql, name) for (sql, name), wanted in zip(halves, (vector, text)) if wanted]
    rankings = " UNION ALL ".join(f"SELECT * FROM {name}" for _, name in chosen)
    ctes = ",".join([READABLE, *(sql for sql, _ in chosen), FUSED.format(rankings=rankings)])
    return "WITH" + ctes


def statement_params(
    user, query_text: str, query_vector: list[float], k: int, *, collections: Sequence[int] | None = None
) -> dict:
    """The parameters ``hybrid_sql``'s statement (and ``TUNE``) binds for the ``k`` best chunks."""
    return {
        "user": user.pk,
        "collections": collection_ids(collections),
        "vector": Vector(query_vector),
        "text": capped_query(query_text),
        "candidates": k * CANDIDATES_PER_HIT,
        "rrf_k": RRF_K,
        "vector_weight": settings.RETRIEVAL_VECTOR_WEIGHT,
        "text_weight": settings.RETRIEVAL_TEXT_WEIGHT,
        "k": k,
        "timeout": str(settings.RETRIEVAL_TIMEOUT_MS),
        "ef": str(settings.HNSW_EF_SEARCH),
    }


def _hybrid(
    user,
    query_text: str,
    query_vector: list[float],
    k: int,
    *,
    vector: bool,
    text: bool,
    collections: Sequence[int] | None = None,
) -> list[Hit]:
    params = statement_params(user, query_text, query_vector, k, collections=collections)
    # Django's error classes (a statement timeout is a django.db.DatabaseError to the caller).
    with transaction.atomic(), connection.wrap_database_errors:
        raw = _psycopg_connection()
        # psycopg's own server-side-binding cursor (Django's connections use client-side binding,
        # which would inline the vector as text; measured: half the CPU of a search).
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(TUNE, params)
            rows = cursor.execute(hybrid_sql(vector=vector, text=text and bool(query_text.strip())), params)
            return [_hit(*row) for row in rows.fetchall()]


def _hit(chunk_id, document_id, title, page, section, text, similarity, score, keyword_match) -> Hit:
    return Hit(
        chunk_id=chunk_id,
        document_id=document_id,
        title=title,
        page=page,
        section=section,
        text=text,
        similarity=round(float(similarity), 4),
        score=round(float(score), 5),
        keyword_match=bool(keyword_match),
    )


_with_vector_type: weakref.WeakSet = weakref.WeakSet()  # raw connections that can send a Vector
_vector_type: dict[str, TypeInfo] = {}  # the ``vector`` type of each database, looked up once


def _psycopg_connection():
    """This thread's open psycopg connection, able to send a ``Vector`` in binary."""
    connection.ensure_connection()
    raw = connection.connection
    if raw not in _with_vector_type:
        database = connection.settings_dict["NAME"]
        if database not in _vector_type:
            _vector_type[database] = TypeInfo.fetch(raw, "vector")
        register_vector_info(raw, _vector_type[database])
        _with_vector_type.add(raw)
    return raw
