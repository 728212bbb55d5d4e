"""Retrieval benchmark: latency and recall@10 of the ACL-filtered pgvector HNSW search at 100k chunks.

What it measures, in one run and side by side:

* data: ``--chunks`` (default 100,000) chunks of 384-dim unit vectors in ``--collections``
  (default 10) collections of documents of 10 chunks, loaded with COPY straight into the
  product's tables (``documents_collection``/``documents_document``/``documents_chunk``) of the
  database ``docchat_bench_retrieval`` of the embedded PostgreSQL (migrated first). One user,
  ``bench-reader``, may read 3 collections: a public one, one they own and one they are a member
  of (30% of the chunks); the others belong to ``bench-owner``.
* the vectors are synthetic but not uniform (uniform random vectors make HNSW recall look
  misleadingly bad or good): 32 topic centres, each collection prefers a few topics (Dirichlet
  0.3), each document mixes 3 topics plus a low-rank (48-dim, decaying spectrum) offset, each
  chunk adds its own low-rank offset and isotropic noise, then is normalised. The run prints the
  resulting similarity statistics (random pairs, nearest neighbours) so they can be compared
  with real MiniLM embeddings. ``--queries`` (default 200) query vectors are drawn the same way
  from the documents of all collections (so most are "about" a document the user cannot read,
  the hard case for a filtered index scan).
* the HNSW index is dropped and rebuilt for each ``--builds`` setting (default the migration's
  m=16, ef_construction=128, then m=24, ef_construction=200); build time and size are printed.
* exact top-10 per query: the product's SQL with ``SET LOCAL enable_indexscan = off`` (a sequential
  scan), cross-checked against a numpy brute force over the same vectors.
* for every build: ``documents.search.vector_search(user, vector, 10)`` (the product path: ACL
  query, ``hnsw.ef_search`` from settings, iterative scan ``relaxed_order``, ORM, Hit objects) with
  ``settings.HNSW_EF_SEARCH`` set to each ``--ef`` value, and the product's SQL (taken from the
  ORM) run over psycopg for each ``hnsw.ef_search`` in ``--ef`` (default 40, 100, 200) x
  ``hnsw.iterative_scan`` in off / relaxed_order / strict_order (one transaction per query with
  ``SET LOCAL``, as the product does; only the SELECT is timed). Per configuration: p50/p99
  latency over ``--rounds`` passes of all queries (configurations interleaved query by query in a
  shuffled order, after a warm-up pass, so drift in the machine's load hits all alike),
  recall@10 against the exact top 10, and how many queries got fewer than 10 rows.

Goals: p50 <= 5 ms, p99 <= 20 ms, recall@10 >= 0.95.

Run from the project folder (about 5-15 minutes on 2 cores: data generation + COPY ~1 min, each
index build 1-4 min; the data are reused by the next run if the parameters match; waits first, up
to ``--wait-quiet`` seconds, for the machine to be quiet)::

    .venv/bin/python bench/retrieval.py [--chunks 100000] [--builds 16:128,24:200] [--ef 40,100,200]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a file: the project root, not bench/, first on sys.path (see bench/common.py)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import (
    add_wait_quiet_argument,
    command_line,
    machine_cpu_seconds,
    percentile,
    print_header,
    setup_django,
    wait_until_quiet,
)

BENCH_DB = "docchat_bench_retrieval"
READER, OWNER = "bench-reader", "bench-owner"
DIM = 384
CHUNKS_PER_DOC = 10
INDEX = "chunk_embedding_hnsw"  # the migration's name
MODES = ("off", "relaxed_order", "strict_order")


# --- command line -----------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--collections", type=int, default=10, help="at least 3")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="timed passes over the queries")
    parser.add_argument("--ef", default="40,100,200", help="hnsw.ef_search values")
    parser.add_argument("--builds", default="16:128,24:200", help="HNSW builds to compare, m:ef_construction,...")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--centers", type=int, default=32, help="topic centres")
    parser.add_argument("--maintenance-work-mem", default="1GB", help="for the index build (the graph fits in memory)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=40,
        help="skip the remaining builds once the run has taken this long",
    )
    add_wait_quiet_argument(parser)
    parser.add_argument("--reload", action="store_true", help="regenerate the data even if reusable")
    parser.add_argument(
        "--reuse-index",
        action="store_true",
        help="keep the index already there if it has the build's m and ef_construction (no build time then)",
    )
    args = parser.parse_args()
    args.ef = [int(v) for v in args.ef.split(",") if v.strip()]
    try:
        args.builds = [tuple(int(x) for x in b.split(":")) for b in args.builds.split(",") if b.strip()]
    except ValueError:
        parser.error("--builds needs m:ef_construction pairs")
    if args.collections < 3 or args.chunks < CHUNKS_PER_DOC * args.collections:
        parser.error("--collections must be >= 3 and --chunks >= 10 per collection")
    return args


# --- synthetic vectors ------------------------------------------------------------------------
@dataclass
class Data:
    vectors: object  # (chunks, 384) float32, unit length
    doc_collection: object  # (docs,) collection index of each document
    queries: object  # (queries, 384) float32
    query_doc: object  # (queries,) the document each query was drawn around


def generate(args: argparse.Namespace) -> Data:
    """Low-rank, clustered, collection-skewed unit vectors (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    rank, s_doc, s_chunk, s_noise = 48, 0.5, 0.6, 0.35
    centers = rng.standard_normal((args.centers, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((DIM, rank)))[0] * np.linspace(1.5, 0.3, rank)
    prefs = rng.dirichlet([0.3] * args.centers, size=args.collections)
    docs = args.chunks // CHUNKS_PER_DOC
    doc_collection = np.arange(docs) % args.collections
    means = np.empty((docs, DIM))
    for d in range(docs):
        topics = rng.choice(args.centers, 3, p=prefs[doc_collection[d]])
        means[d] = rng.dirichlet([1.0] * 3) @ centers[topics]
    means += s_doc * (rng.standard_normal((docs, rank)) @ basis.T) / np.sqrt(rank)

    def chunks(around):
        v = (
            around
            + s_chunk * (rng.standard_normal((len(around), rank)) @ basis.T) / np.sqrt(rank)
            + s_noise * rng.standard_normal((len(around), DIM)) / np.sqrt(DIM)
        )
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    vectors = chunks(np.repeat(means, CHUNKS_PER_DOC, axis=0))
    query_doc = rng.integers(0, docs, args.queries)
    return Data(vectors, doc_collection, chunks(means[query_doc]), query_doc)


def data_key(args: argparse.Namespace) -> str:
    spec = {"v": 2, "chunks": args.chunks, "collections": args.collections, "seed": args.seed,
            "centers": args.centers, "queries": args.queries}  # fmt: skip
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# --- database ---------------------------------------------------------------------------------
def raw_connection():
    """A plain psycopg connection to the bench database (client-side binding, as Django's)."""
    import psycopg
    from django.db import connection
    from pgvector.psycopg import register_vector

    connection.ensure_connection()  # starts the embedded server; fills in its socket folder
    params = connection.settings_dict
    conn = psycopg.connect(
        host=params["HOST"], user=params["USER"], dbname=params["NAME"],
        autocommit=True, cursor_factory=psycopg.ClientCursor,
    )  # fmt: skip
    register_vector(conn)
    return conn


def stored_key(conn) -> str | None:
    conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value text)")
    row = conn.execute("SELECT value FROM bench_meta WHERE key = 'data'").fetchone()
    return row[0] if row else None


def load_data(conn, args: argparse.Namespace, data: Data) -> float:
    """Wipe the bench database's documents and load the synthetic ones with COPY; seconds taken."""
    from django.contrib.auth import get_user_model

    from documents.models import Collection

    started = time.perf_counter()
    conn.execute("DELETE FROM bench_meta")
    conn.execute("DROP INDEX IF EXISTS " + INDEX)
    conn.execute(
        "TRUNCATE documents_chunk, documents_document, documents_collection_members, "
        "documents_collection RESTART IDENTITY CASCADE"
    )
    User = get_user_model()
    reader, _ = User.objects.get_or_create(username=READER)
    owner, _ = User.objects.get_or_create(username=OWNER)
    collections = []
    for i in range(args.collections):
        collection = Collection.objects.create(
            name=f"bench-c{i:02d}", owner=reader if i == 1 else owner, is_public=(i == 0)
        )
        if i == 2:
            collection.members.add(reader)
        collections.append(collection.pk)
    docs = len(data.doc_collection)
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(
            "COPY documents_document (id, collection_id, title, source_path, mime, sha256, "
            "size_bytes, status, error, chunks_total, chunks_done, created_at, updated_at, file, "
            "task_id) FROM STDIN"
        ) as copy:
            for d in range(docs):
                copy.write_row(
                    (d + 1, collections[int(data.doc_collection[d])], f"Document {d}", "",
                     "text/markdown", f"{d:064x}", 1000, "ready", "", CHUNKS_PER_DOC,
                     CHUNKS_PER_DOC, "2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z", "", "")
                )  # fmt: skip
        with cur.copy(
            "COPY documents_chunk (id, document_id, ordinal, text, section, token_count, embedding) "
            "FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int8", "int4", "text", "varchar", "int4", "vector"])
            for i, vector in enumerate(data.vectors):
                doc, ordinal = divmod(i, CHUNKS_PER_DOC)
                copy.write_row((i + 1, doc + 1, ordinal, f"Synthetic chunk {i}.", "", 4, vector))
        for table in ("documents_document", "documents_chunk"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    conn.execute("VACUUM ANALYZE documents_document")
    conn.execute("VACUUM ANALYZE documents_chunk")
    conn.execute("INSERT INTO bench_meta VALUES ('data', %s)", [data_key(args)])
    return time.perf_counter() - started


def build_index(conn, m: int, ef_construction: int, maintenance_work_mem: str) -> dict:
    """Drop and recreate the migration's HNSW index with these parameters."""
    conn.execute("DROP INDEX IF EXISTS " + INDEX)
    conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
    conn.execute("SET max_parallel_maintenance_workers = 1")  # leader + 1 worker: the 2 cores
    started = time.perf_counter()
    conn.execute(
        f"CREATE INDEX {INDEX} ON documents_chunk USING hnsw (embedding vector_cosine_ops) "
        f"WITH (m = {m}, ef_construction = {ef_construction})"
    )
    seconds = time.perf_counter() - started
    conn.execute("RESET maintenance_work_mem")
    conn.execute("RESET max_parallel_maintenance_workers")
    conn.execute("ANALYZE documents_chunk")
    size = conn.execute(f"SELECT pg_relation_size('{INDEX}')").fetchone()[0]
    return {"m": m, "ef_construction": ef_construction, "seconds": seconds, "bytes": size}


def index_params(conn) -> tuple[int, int] | None:
    definition = current_index(conn) or ""
    match = re.search(r"m='?(\d+)'?, ef_construction='?(\d+)'?", definition)
    return (int(match.group(1)), int(match.group(2))) if match else None


def current_index(conn) -> str | None:
    row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [INDEX]).fetchone()
    return row[0] if row else None


def prewarm(conn) -> str:
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        pages = [conn.execute(f"SELECT pg_prewarm('{rel}')").fetchone()[0]
                 for rel in ("documents_chunk", INDEX, "documents_document")]  # fmt: skip
        return f"pg_prewarm loaded {sum(pages)} pages"
    except Exception as exc:  # contrib missing: the warm-up pass does the job
        return f"pg_prewarm unavailable ({type(exc).__name__})"


# --- the queries ------------------------------------------------------------------------------
def product_sql(user) -> tuple[str, list]:
    """The SQL ``documents.search.vector_search`` runs for ``user``, with the vector as params[0]."""
    from pgvector.django import CosineDistance

    from documents.search import readable_chunks

    query = readable_chunks(user).annotate(distance=CosineDistance("embedding", [0.0] * DIM)).order_by("distance")[:10]
    sql, params = query.query.sql_with_params()
    return sql, [str(p) if not isinstance(p, (int, float)) else p for p in params]


def vector_text(vector) -> str:
    return "[" + ",".join(f"{x:.9g}" for x in vector) + "]"


def run_sql(conn, sql: str, params: list, settings: list[str]) -> tuple[float, list[int]]:
    """One query in its own transaction with ``SET LOCAL``s; seconds of the SELECT and the ids."""
    with conn.transaction(), conn.cursor() as cur:
        if settings:
            cur.execute("; ".join(f"SET LOCAL {s}" for s in settings))
        started = time.perf_counter()
        cur.execute(sql, params)
        rows = cur.fetchall()
        return time.perf_counter() - started, [row[0] for row in rows]


def exact_top10(conn, sql: str, params: list, queries: list[str]) -> list[list[int]]:
    settings = ["enable_indexscan = off", "enable_bitmapscan = off", "jit = off", "statement_timeout = 0"]
    return [run_sql(conn, sql, [q, *params[1:]], settings)[1] for q in queries]


def explain(conn, sql: str, params: list, settings: list[str]) -> list[str]:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("; ".join(f"SET LOCAL {s}" for s in settings))
        cur.execute("EXPLAIN (ANALYZE, COSTS OFF, BUFFERS) " + sql, params)
        return [re.sub(r"'\[[-0-9.e,]+\]'", "'[...]'", row[0]) for row in cur.fetchall()]


@dataclass
class Config:
    label: str
    ef: int
    mode: str  # hnsw.iterative_scan, "product" for vector_search
    latencies: list[float] = field(default_factory=list)
    results: dict[int, list[int]] = field(default_factory=dict)
    sql: str | None = None  # instead of the product's SQL

    def run(self, conn, sql: str, params: list, query: int, text: str, vector, user) -> None:
        if self.mode == "product":
            from django.conf import settings

            from documents.search import vector_search

            settings.HNSW_EF_SEARCH = self.ef
            started = time.perf_counter()
            hits = vector_search(user, vector, 10)
            seconds = time.perf_counter() - started
            ids = [hit.chunk_id for hit in hits]
        else:
            seconds, ids = run_sql(
                conn, self.sql or sql, [text, *params[1:]],
                [f"hnsw.ef_search = {self.ef}", f"hnsw.iterative_scan = {self.mode}"],
            )  # fmt: skip
        self.latencies.append(seconds)
        self.results[query] = ids


def measure(conn, args, sql, params, data: Data, texts, user, default_ef: int) -> list[Config]:
    configs = [Config(f"vector_search (product), ef_search={ef}", ef, "product") for ef in args.ef]
    configs += [Config(f"SQL ef_search={ef} iterative_scan={mode}", ef, mode)
                for mode in MODES for ef in args.ef]  # fmt: skip
    # The same query without fetching the two columns the product never uses from the rows.
    # (ORDER BY names the column: the ORM orders by its position, which the removal shifts.)
    slim = sql.replace('"documents_chunk"."embedding", "documents_chunk"."search_vector", ', "")
    slim = re.sub(r"ORDER BY \d+ ASC", 'ORDER BY "distance" ASC', slim)
    if slim != sql:
        configs.append(Config(f"SQL ef_search={default_ef} relaxed_order, no embedding column",
                              default_ef, "relaxed_order", sql=slim))  # fmt: skip
    vectors = [v.tolist() for v in data.queries]
    shuffle = random.Random(args.seed)
    for q in range(len(texts)):  # warm-up pass, not recorded
        for config in configs:
            config.run(conn, sql, params, q, texts[q], vectors[q], user)
    for config in configs:
        config.latencies.clear()
    for _ in range(args.rounds):
        for q in range(len(texts)):
            for config in shuffle.sample(configs, len(configs)):
                config.run(conn, sql, params, q, texts[q], vectors[q], user)
    from django.conf import settings

    settings.HNSW_EF_SEARCH = default_ef
    return configs


def ms(seconds: list[float], q: float) -> float:
    """The ``q`` percentile of ``seconds`` in milliseconds (every list timed here has values)."""
    return 1000 * (percentile(seconds, q) or 0.0)


def recall(config: Config, exact: list[list[int]]) -> tuple[float, int]:
    hits = [len(set(config.results[q]) & set(exact[q])) / 10 for q in range(len(exact))]
    short = sum(1 for q in range(len(exact)) if len(config.results[q]) < 10)
    return sum(hits) / len(hits), short


def print_table(build: dict, configs: list[Config], exact) -> list[str]:
    built = "reused (built by an earlier run)" if build["seconds"] is None else f"built in {build['seconds']:.0f} s"
    lines = [
        f"HNSW m={build['m']}, ef_construction={build['ef_construction']}: {built}, {build['bytes'] / 2**20:.0f} MiB",
        "",
        f"| {'configuration':<48} | {'p50 ms':>6} | {'p99 ms':>6} | {'recall@10':>9} | {'<10 rows':>8} | goals |",
        f"|{'-' * 50}|{'-' * 8}|{'-' * 8}|{'-' * 11}|{'-' * 10}|-------|",
    ]
    for config in configs:
        p50, p99 = ms(config.latencies, 50), ms(config.latencies, 99)
        r, short = recall(config, exact)
        ok = "ok" if p50 <= 5 and p99 <= 20 and r >= 0.95 else "miss"
        lines.append(f"| {config.label:<48} | {p50:>6.1f} | {p99:>6.1f} | {r:>9.3f} | {short:>8} | {ok:>5} |")
    return lines


def product_breakdown(user, data: Data, exact, default_ef: int) -> list[str]:
    """Where a ``vector_search`` call spends its time (p50 per step over the queries), and the same
    call with the two unused columns deferred (a product change, made here in the benchmark only)."""
    from django.conf import settings
    from django.db import transaction
    from pgvector.django import CosineDistance

    from documents import search

    settings.HNSW_EF_SEARCH = default_ef
    steps: dict[str, list[float]] = {}
    originals = {
        name: getattr(search, name) for name in ("readable_chunks", "_tune_vector_scan", "_exact_order", "fuse")
    }

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                steps.setdefault(name, []).append(time.perf_counter() - started)

        return wrapper

    def deferred_search(vector):  # vector_search with .defer("embedding", "search_vector")
        with transaction.atomic():
            search._tune_vector_scan()
            chunks = (
                search.readable_chunks(user)
                .defer("embedding", "search_vector")
                .annotate(distance=CosineDistance("embedding", vector))
            )
            return search.fuse([search._exact_order(chunks.order_by("distance")[:10])], 10)

    totals: dict[str, list[float]] = {"vector_search": [], "deferred": []}
    found: dict[str, list[list[int]]] = {"vector_search": [], "deferred": []}
    for vector in (v.tolist() for v in data.queries):
        for name, call in (
            ("vector_search", lambda v: search.vector_search(user, v, 10)),
            ("deferred", deferred_search),
        ):
            for attr, function in originals.items():
                setattr(search, attr, timed(f"{name}:{attr}", function))
            try:
                started = time.perf_counter()
                hits = call(vector)
                totals[name].append(time.perf_counter() - started)
            finally:
                for attr, function in originals.items():
                    setattr(search, attr, function)
            found[name].append([hit.chunk_id for hit in hits])

    def p50(name: str) -> float:
        return ms(steps[name], 50)

    lines = []
    deferred_fields, _ = search.readable_chunks(user).query.deferred_loading
    already = "; the product already defers them" if {"embedding", "search_vector"} <= set(deferred_fields) else ""
    for name, label in (
        ("vector_search", "vector_search as is"),
        ("deferred", f"with .defer(embedding, search_vector){already}"),
    ):
        r = sum(len(set(a) & set(b)) for a, b in zip(found[name], exact, strict=True)) / (10 * len(exact))
        rest = [t - sum(steps[f"{name}:{attr}"][i] for attr in originals) for i, t in enumerate(totals[name])]
        lines.append(
            f"  breakdown, {label}, ef_search={default_ef}, p50 per step: ACL query + queryset "
            f"{p50(name + ':readable_chunks'):.1f} ms, SET LOCALs {p50(name + ':_tune_vector_scan'):.1f} ms, "
            f"SELECT + rows to models {p50(name + ':_exact_order'):.1f} ms, hits {p50(name + ':fuse'):.2f} ms, "
            f"rest (transaction, ...) {ms(rest, 50):.1f} ms; total p50 "
            f"{ms(totals[name], 50):.1f} / p99 {ms(totals[name], 99):.1f} ms; recall {r:.3f}"
        )
    return lines


# --- report -----------------------------------------------------------------------------------
def similarity_stats(data: Data, readable_docs, exact_numpy) -> str:
    import numpy as np

    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(data.vectors), (20000, 2))
    random_pairs = (data.vectors[pairs[:, 0]] * data.vectors[pairs[:, 1]]).sum(1)
    sims = np.array([[float(data.queries[q] @ data.vectors[i - 1]) for i in exact_numpy[q]]
                     for q in range(len(exact_numpy))])  # fmt: skip
    own = readable_docs[data.query_doc].mean()
    return (
        f"vector statistics: cosine of random chunk pairs mean {random_pairs.mean():.3f} "
        f"(p95 {np.percentile(random_pairs, 95):.3f}); readable top-1 / top-10 cosine to the query "
        f"mean {sims[:, 0].mean():.3f} / {sims[:, 9].mean():.3f}; {100 * own:.0f}% of the queries "
        f"were drawn around a document the user can read"
    )


def numpy_top10(data: Data, readable_chunk_mask) -> list[list[int]]:
    import numpy as np

    ids = np.flatnonzero(readable_chunk_mask)
    scores = data.queries @ data.vectors[ids].T
    top = np.argsort(-scores, axis=1)[:, :10]
    return [[int(ids[i]) + 1 for i in row] for row in top]


def main() -> int:
    args = parse_args()
    run_started = time.monotonic()
    command = command_line()
    print_header(command)
    setup_django(BENCH_DB)
    import numpy as np
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from documents.models import Collection

    conn = raw_connection()
    default_ef = settings.HNSW_EF_SEARCH
    conn.execute("SELECT '[1]'::vector <=> '[1]'::vector")  # loads pgvector: its settings exist
    server = conn.execute(
        "SELECT current_setting('server_version'), extversion, current_setting('shared_buffers'), "
        "current_setting('hnsw.max_scan_tuples'), current_setting('hnsw.scan_mem_multiplier') "
        "FROM pg_extension WHERE extname = 'vector'"
    ).fetchone()
    print(
        f"PostgreSQL {server[0]}, pgvector {server[1]}, shared_buffers {server[2]}, "
        f"hnsw.max_scan_tuples {server[3]}, hnsw.scan_mem_multiplier {server[4]}; database {BENCH_DB}"
    )
    started = time.perf_counter()
    data = generate(args)
    print(
        f"generated {len(data.vectors)} vectors + {len(data.queries)} queries in {time.perf_counter() - started:.0f} s"
    )
    if args.reload or stored_key(conn) != data_key(args):
        print("loading the data with COPY ...", flush=True)
        print(f"loaded in {load_data(conn, args, data):.0f} s")
    else:
        print("data already loaded by an earlier run with the same parameters: reused")
    user = get_user_model().objects.get(username=READER)
    readable = sorted(Collection.objects.readable_by(user).values_list("id", flat=True))
    names = list(Collection.objects.filter(id__in=readable).order_by("id").values_list("name", flat=True))
    collection_index = {c.pk: int(c.name[-2:]) for c in Collection.objects.filter(name__startswith="bench-c")}
    readable_docs = np.isin(data.doc_collection, [collection_index[c] for c in readable])
    readable_chunks = np.repeat(readable_docs, CHUNKS_PER_DOC)
    print(
        f"{len(data.vectors)} chunks in {args.collections} collections, {len(data.doc_collection)} "
        f"documents; {READER} reads {names} = {int(readable_chunks.sum())} chunks "
        f"({100 * readable_chunks.mean():.0f}%)"
    )
    sql, params = product_sql(user)
    texts = [vector_text(v) for v in data.queries]

    print("exact top 10 (sequential scan) ...", flush=True)
    started = time.perf_counter()
    exact = exact_top10(conn, sql, params, texts)
    exact_seconds = (time.perf_counter() - started) / len(texts)
    by_numpy = numpy_top10(data, readable_chunks)
    agreement = sum(len(set(a) & set(b)) for a, b in zip(exact, by_numpy, strict=True)) / (10 * len(exact))
    stats = similarity_stats(data, readable_docs, by_numpy)
    print(stats)
    print(
        f"exact search: {1000 * exact_seconds:.0f} ms per query; agrees with numpy on {100 * agreement:.2f}% of the top-10 ids"
    )

    load_line = wait_until_quiet(args.wait_quiet)
    print(load_line, flush=True)
    report: list[str] = []
    plans: list[str] = []
    for m, ef_construction in args.builds:
        elapsed = (time.monotonic() - run_started) / 60
        if report and elapsed > args.max_minutes:
            report.append(f"build m={m}, ef_construction={ef_construction} skipped: {elapsed:.0f} min > --max-minutes")
            continue
        if args.reuse_index and index_params(conn) == (m, ef_construction):
            size = conn.execute(f"SELECT pg_relation_size('{INDEX}')").fetchone()[0]
            build = {"m": m, "ef_construction": ef_construction, "seconds": None, "bytes": size}
            print(f"reusing the HNSW index m={m}, ef_construction={ef_construction}", flush=True)
        else:
            print(f"building HNSW m={m}, ef_construction={ef_construction} ...", flush=True)
            build = build_index(conn, m, ef_construction, args.maintenance_work_mem)
            print(f"  built in {build['seconds']:.0f} s", flush=True)
        print(f"  {prewarm(conn)}", flush=True)
        if report and args.wait_quiet > 0:  # the build took minutes: check the load again
            print(wait_until_quiet(args.wait_quiet), flush=True)
        print("  timing ...", flush=True)
        load_before = os.getloadavg()[0]
        cpu_before, wall_before = machine_cpu_seconds(), time.monotonic()
        configs = measure(conn, args, sql, params, data, texts, user, default_ef)
        busy = 100 * (machine_cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        lines = print_table(build, configs, exact)
        lines += product_breakdown(user, data, exact, default_ef)
        lines.append(
            f"(timing: loadavg {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; machine busy "
            f"{busy:.0f}% of one core meanwhile, this client and Postgres included)"
        )
        print("\n".join(lines), flush=True)
        report += ["", *lines]
        if not plans:
            settings_ = [f"hnsw.ef_search = {default_ef}", "hnsw.iterative_scan = relaxed_order"]
            plans = explain(conn, sql, [texts[0], *params[1:]], settings_)

    print()
    print("=" * 100)
    print(f"command: {command}")
    print(f"machine: nproc={len(os.sched_getaffinity(0))}; {load_line}")
    print(stats)
    print(
        f"exact top 10: {1000 * exact_seconds:.0f} ms per query by sequential scan; numpy agreement {100 * agreement:.2f}%"
    )
    print(f"latency: {args.rounds} x {len(texts)} queries per configuration; SQL rows time the SELECT only, "
          "product rows the whole vector_search call (ACL query, SET LOCALs, ORM, hits)")  # fmt: skip
    print("\n".join(report))
    print()
    print("plan of the product query (ef_search from settings, relaxed_order), first query:")
    print("\n".join(f"    {line}" for line in plans))
    final = current_index(conn)
    print(f"index left in {BENCH_DB}: {final}")
    print(f"total run time {(time.monotonic() - run_started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
