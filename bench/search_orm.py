"""The hybrid search as it was before it became one SQL statement (``documents/search.py`` at 725d337).

Kept only as the "before" that ``bench/retrieval.py`` measures side by side with the product's
``documents.search``; nothing in the product uses it. Through the Django ORM: a query for the ids of
the collections the user may read, three ``set_config`` statements, a vector query (the query vector
sent as text) and a full-text query, each building model instances, then the reciprocal-rank fusion
in Python. ``Hit`` and ``RRF_K`` are the product's, so both versions return the same objects.
"""

from __future__ import annotations

from collections.abc import Set

from django.conf import settings
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection, transaction
from django.db.models import F
from pgvector.django import CosineDistance

from documents.models import Chunk, Collection, Document
from documents.search import RRF_K, Hit


def readable_chunks(user):
    collection_ids = list(Collection.objects.readable_by(user).values_list("id", flat=True))
    return (
        Chunk.objects.filter(document__collection_id__in=collection_ids)
        .exclude(document__status=Document.Status.FAILED)
        .select_related("document")
        .defer("embedding", "search_vector")
    )


def search(user, query_text: str, query_vector: list[float], k: int | None = None) -> list[Hit]:
    """The ``k`` best chunks for the query among those ``user`` may read, best first."""
    k = k or settings.RETRIEVAL_TOP_K
    candidates = k * 4
    with transaction.atomic():
        _tune_vector_scan()
        chunks = readable_chunks(user).annotate(distance=CosineDistance("embedding", query_vector))
        by_vector = _exact_order(chunks.order_by("distance")[:candidates])
        by_text = list(_full_text(chunks, query_text)[:candidates]) if query_text.strip() else []
    return fuse([by_vector, by_text], k, keyword_ids={chunk.pk for chunk in by_text})


def vector_search(user, query_vector: list[float], k: int) -> list[Hit]:
    """The vector half alone: the ``k`` nearest readable chunks."""
    with transaction.atomic():
        _tune_vector_scan()
        chunks = readable_chunks(user).annotate(distance=CosineDistance("embedding", query_vector))
        return fuse([_exact_order(chunks.order_by("distance")[:k])], k)


def _exact_order(chunks) -> list[Chunk]:
    # relaxed_order lets the iterative scan return rows slightly out of order: re-sort them.
    return sorted(chunks, key=_distance)


def _distance(chunk: Chunk) -> float:
    return float(chunk.distance)  # type: ignore[attr-defined]


def _full_text(chunks, query_text: str):
    query = SearchQuery(query_text, config="english", search_type="websearch")
    return chunks.filter(search_vector=query).annotate(rank=SearchRank(F("search_vector"), query)).order_by("-rank")


def _tune_vector_scan() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(settings.RETRIEVAL_TIMEOUT_MS)])
        cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(settings.HNSW_EF_SEARCH)])
        cursor.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")


def fuse(rankings: list[list[Chunk]], k: int, keyword_ids: Set[int] = frozenset()) -> list[Hit]:
    """Reciprocal-rank fusion of several rankings of annotated chunks."""
    scores: dict[int, float] = {}
    chunks: dict[int, Chunk] = {}
    for ranking in rankings:
        for rank, chunk in enumerate(ranking, start=1):
            scores[chunk.pk] = scores.get(chunk.pk, 0.0) + 1.0 / (RRF_K + rank)
            chunks[chunk.pk] = chunk
    best = sorted(scores, key=lambda pk: scores[pk], reverse=True)[:k]
    return [_hit(chunks[pk], scores[pk], pk in keyword_ids) for pk in best]


def _hit(chunk: Chunk, score: float, keyword_match: bool) -> Hit:
    return Hit(
        chunk_id=chunk.pk,
        document_id=chunk.document_id,
        title=chunk.document.title,
        page=chunk.page,
        section=chunk.section,
        text=chunk.text,
        similarity=round(1.0 - _distance(chunk), 4),
        score=round(score, 5),
        keyword_match=keyword_match,
    )
