"""Retrieval benchmark: latency, CPU and recall@10 of the ACL-filtered hybrid search at 100k chunks.

What it measures, in one run and side by side:

* data: ``--chunks`` (default 100,000) chunks of 384-dim unit vectors in ``--collections``
  (default 10) collections of documents of 10 chunks, loaded with COPY straight into the
  product's tables (``documents_collection``/``documents_document``/``documents_chunk``, the
  ``search_vector`` filled as ingestion does) of the database ``docchat_bench_retrieval`` of the
  embedded PostgreSQL (migrated first). One user, ``bench-reader``, may read 3 collections: a
  public one, one they own and one they are a member of (30% of the chunks); the others belong to
  ``bench-owner``.
* the vectors are synthetic but not uniform (uniform random vectors make HNSW recall look
  misleadingly bad or good): 32 topic centres, each collection prefers a few topics (Dirichlet
  0.3), each document mixes 3 topics plus a low-rank (48-dim, decaying spectrum) offset, each
  chunk adds its own low-rank offset and isotropic noise, then is normalised. The run prints the
  resulting similarity statistics (random pairs, nearest neighbours) so they can be compared
  with real MiniLM embeddings. ``--queries`` (default 200) query vectors are drawn the same way
  from the documents of all collections (so most are "about" a document the user cannot read,
  the hard case for a filtered index scan).
* the texts are synthetic too: each document has a made-up keyword (one of chunks / 200, so a
  keyword occurs in ~20 documents) that each of its chunks repeats 1-3 times among 30 common
  filler words; a query's text is the keyword of the document it was drawn around, so the
  full-text half of the hybrid search finds ~60 readable chunks in three tiers of ``ts_rank``.
* the HNSW index is dropped and rebuilt for each ``--builds`` setting (default the migration's
  m=16, ef_construction=128, then m=24, ef_construction=200); build time and size are printed.
* exact top-10 per query: the product's vector-only statement with ``SET LOCAL enable_indexscan =
  off`` (a sequential scan), cross-checked against a numpy brute force over the same vectors.
* for every build, per query and in one shuffled order (after a warm-up pass, over ``--rounds``
  passes, so drift in the machine's load hits all alike):
  - the product before and now, at ``settings.HNSW_EF_SEARCH``: ``vector_search(user, vector, 10)``
    and the hybrid ``search(user, text, vector, 10)`` of ``documents.search`` (one SQL statement on
    Django's psycopg connection, one ``set_config``) and of ``bench/search_orm.py`` (the ORM
    version it replaced: ACL query, three ``set_config``, vector and full-text queries, model
    instances, fusion in Python); the whole call is timed;
  - the product's vector-only statement (``documents.search.hybrid_sql(vector=True, text=False)``,
    top 10 of 40 candidates) on a psycopg connection with server-side binding (the vector a binary
    parameter), for each ``hnsw.ef_search`` in ``--ef`` (default 40, 100, 200) x
    ``hnsw.iterative_scan`` in off / relaxed_order / strict_order (one transaction per query with
    ``SET LOCAL``; only the statement and the fetch are timed), and once more at
    ``settings.HNSW_EF_SEARCH`` with client-side binding (the vector merged into the SQL as text),
    which is how the cursors of a psycopg connection made by Django bind.
  Per row: p50/p99 latency, this process's CPU time per call (``time.process_time``: what a call
  costs the server's GIL; PostgreSQL's own CPU is not in it), recall@10 against the exact top 10
  (vector-only rows) and how many queries got fewer than 10 rows; then how far the top 10 of the
  before and now versions agree. (Many chunks share a ``ts_rank`` here; neither version breaks
  those ties before taking its full-text candidates, so their hybrid top 10s differ among them.)

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
K = 10  # the top 10 is what recall is measured on
DOCS_PER_KEYWORD = 20
FILLER = (
    "report value system process table record result change level review policy account service "
    "request budget period method source figure detail"
).split()


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
    chunk_texts: list[str]
    query_texts: list[str]  # the keyword of each query's document


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
    chunk_texts, doc_keywords = synthetic_texts(args.seed, docs)
    query_texts = [doc_keywords[d] for d in query_doc]
    return Data(vectors, doc_collection, chunks(means[query_doc]), query_doc, chunk_texts, query_texts)


def synthetic_texts(seed: int, docs: int) -> tuple[list[str], list[str]]:
    """The chunks' texts and each document's keyword (see the module docstring)."""
    syllables = [c + v for c in "bdgklmnprtvz" for v in "aou"]
    words = max(10, docs // DOCS_PER_KEYWORD)
    vocabulary = [
        "".join(syllables[(w // len(syllables) ** p) % len(syllables)] for p in range(3)) for w in range(words)
    ]
    rng = random.Random(seed)  # its own generator: the vectors stay those of earlier runs
    doc_keywords = [rng.choice(vocabulary) for _ in range(docs)]
    chunk_texts = []
    for i in range(docs * CHUNKS_PER_DOC):
        doc = i // CHUNKS_PER_DOC
        body = rng.choices(FILLER, k=30)
        for _ in range(rng.randint(1, 3)):
            body.insert(rng.randrange(len(body) + 1), doc_keywords[doc])
        chunk_texts.append(f"Synthetic chunk {i} of document {doc}: {' '.join(body)}.")
    return chunk_texts, doc_keywords


def data_key(args: argparse.Namespace) -> str:
    spec = {"v": 3, "chunks": args.chunks, "collections": args.collections, "seed": args.seed,
            "centers": args.centers, "queries": args.queries}  # fmt: skip
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# --- database ---------------------------------------------------------------------------------
def raw_connection():
    """A plain psycopg connection to the bench database: server-side binding, a ``pgvector.Vector``
    sent as a binary parameter."""
    import psycopg
    from django.db import connection
    from pgvector.psycopg import register_vector

    connection.ensure_connection()  # starts the embedded server; fills in its socket folder
    params = connection.settings_dict
    conn = psycopg.connect(
        host=params["HOST"], user=params["USER"], dbname=params["NAME"],
        autocommit=True,
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
            for i, (vector, text) in enumerate(zip(data.vectors, data.chunk_texts, strict=True)):
                doc, ordinal = divmod(i, CHUNKS_PER_DOC)
                copy.write_row((i + 1, doc + 1, ordinal, text, "", len(text.split()), vector))
        cur.execute("UPDATE documents_chunk SET search_vector = to_tsvector('english', text)")  # as ingestion does
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
def statement_params(user, vector, text: str = "") -> dict:
    """The parameters ``documents.search`` binds to its statement for a top 10."""
    from documents.search import statement_params as product_params

    return product_params(user, text, vector, K)


def timed(function: Callable, *args) -> tuple[float, float, Any]:
    """Wall-clock seconds and this process's CPU seconds of one call, and what it returned."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def run_sql(conn, sql: str, params: dict, settings: list[str], cursor_factory=None) -> tuple[float, float, list[int]]:
    """One statement in its own transaction after ``SET LOCAL``s: seconds and CPU seconds of the
    statement and its fetch, and the ids."""
    with conn.transaction():
        conn.execute("; ".join(f"SET LOCAL {s}" for s in settings))
        with (cursor_factory or conn.cursor_factory)(conn) as cur:
            seconds, cpu, rows = timed(lambda: cur.execute(sql, params).fetchall())
            return seconds, cpu, [row[0] for row in rows]


def exact_top10(conn, sql: str, params: list[dict]) -> list[list[int]]:
    settings = ["enable_indexscan = off", "enable_bitmapscan = off", "jit = off", "statement_timeout = 0"]
    return [run_sql(conn, sql, p, settings)[2] for p in params]


def explain(conn, sql: str, params: dict, settings: list[str]) -> list[str]:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("; ".join(f"SET LOCAL {s}" for s in settings))
        plan = cur.execute("EXPLAIN (ANALYZE, COSTS OFF, BUFFERS) " + sql, params).fetchall()
        return [re.sub(r"'\[[-0-9.e,]+\]'", "'[...]'", row[0]) for row in plan]  # the vector, as the server shows it


@dataclass
class Config:
    label: str
    call: Callable[[int], tuple[float, float, list[int]]]  # query -> seconds, CPU seconds, chunk ids
    vector_only: bool = True  # recall against the exact vector top 10 applies
    latencies: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    results: dict[int, list[int]] = field(default_factory=dict)

    def run(self, query: int) -> None:
        seconds, cpu, self.results[query] = self.call(query)
        self.latencies.append(seconds)
        self.cpu.append(cpu)


def product_configs(data: Data, user, ef: int) -> list[Config]:
    """The product's searches before (``bench/search_orm.py``) and now (``documents.search``), in
    before/now pairs."""
    from bench import search_orm as before
    from documents import search as now

    vectors = [v.tolist() for v in data.queries]

    def call(search: Callable, with_text: bool) -> Callable:
        def one(query: int) -> tuple[float, float, list[int]]:
            words = [data.query_texts[query]] if with_text else []
            seconds, cpu, hits = timed(search, user, *words, vectors[query], K)
            return seconds, cpu, [hit.chunk_id for hit in hits]

        return one

    return [
        Config(f"vector_search before (ORM), ef_search={ef}", call(before.vector_search, False)),
        Config(f"vector_search now (one statement), ef_search={ef}", call(now.vector_search, False)),
        Config(f"search (hybrid) before (ORM), ef_search={ef}", call(before.search, True), vector_only=False),
        Config(f"search (hybrid) now (one statement), ef_search={ef}", call(now.search, True), vector_only=False),
    ]


def sql_configs(conn, args, sql: str, params: list[dict], default_ef: int) -> list[Config]:
    import psycopg

    def call(ef: int, mode: str, cursor_factory=None) -> Callable:
        settings = [f"hnsw.ef_search = {ef}", f"hnsw.iterative_scan = {mode}"]
        return lambda query: run_sql(conn, sql, params[query], settings, cursor_factory)

    configs = [Config(f"SQL ef_search={ef} iterative_scan={mode}", call(ef, mode)) for mode in MODES for ef in args.ef]
    label = f"SQL ef_search={default_ef} relaxed_order, client-side binding"
    return [*configs, Config(label, call(default_ef, "relaxed_order", psycopg.ClientCursor))]


def measure(configs: list[Config], queries: int, rounds: int, seed: int) -> None:
    """A warm-up pass, then ``rounds`` timed passes, every configuration per query in a shuffled order."""
    shuffle = random.Random(seed)
    for q in range(queries):
        for config in configs:
            config.run(q)
    for config in configs:
        config.latencies.clear()
        config.cpu.clear()
    for _ in range(rounds):
        for q in range(queries):
            for config in shuffle.sample(configs, len(configs)):
                config.run(q)


def ms(seconds: list[float], q: float) -> float:
    """The ``q`` percentile of ``seconds`` in milliseconds (every list timed here has values)."""
    return 1000 * (percentile(seconds, q) or 0.0)


def recall(config: Config, exact: list[list[int]]) -> tuple[float, int]:
    hits = [len(set(config.results[q]) & set(exact[q])) / K for q in range(len(exact))]
    short = sum(1 for q in range(len(exact)) if len(config.results[q]) < K)
    return sum(hits) / len(hits), short


def print_table(build: dict, configs: list[Config], exact) -> list[str]:
    built = "reused (built by an earlier run)" if build["seconds"] is None else f"built in {build['seconds']:.0f} s"
    lines = [
        f"HNSW m={build['m']}, ef_construction={build['ef_construction']}: {built}, {build['bytes'] / 2**20:.0f} MiB",
        "",
        f"| {'configuration':<56} | {'p50 ms':>6} | {'p99 ms':>6} | {'CPU ms p50':>10} | {'CPU ms mean':>11} "
        f"| {'recall@10':>9} | {'<10 rows':>8} | goals |",
        f"|{'-' * 58}|{'-' * 8}|{'-' * 8}|{'-' * 12}|{'-' * 13}|{'-' * 11}|{'-' * 10}|-------|",
    ]
    for config in configs:
        p50, p99 = ms(config.latencies, 50), ms(config.latencies, 99)
        cpu_mean = 1000 * sum(config.cpu) / len(config.cpu)
        r, short = recall(config, exact)
        ok = "ok" if p50 <= 5 and p99 <= 20 and (r >= 0.95 or not config.vector_only) else "miss"
        shown = f"{r:>9.3f}" if config.vector_only else f"{'-':>9}"
        lines.append(
            f"| {config.label:<56} | {p50:>6.1f} | {p99:>6.1f} | {ms(config.cpu, 50):>10.2f} | {cpu_mean:>11.2f} "
            f"| {shown} | {short:>8} | {ok:>5} |"
        )
    return lines


def before_and_now(configs: list[Config], queries: int) -> list[str]:
    """Per search, now against before: latency and CPU per call, and how far their top 10s agree."""
    lines = []
    for before, now in zip(configs[0::2], configs[1::2], strict=True):
        name = before.label.split(" before")[0]
        same_order = sum(before.results[q] == now.results[q] for q in range(queries))
        same_set = sum(set(before.results[q]) == set(now.results[q]) for q in range(queries))
        overlap = sum(len(set(before.results[q]) & set(now.results[q])) for q in range(queries)) / (K * queries)
        cpu_before, cpu_now = sum(before.cpu) / len(before.cpu), sum(now.cpu) / len(now.cpu)
        lines.append(
            f"  {name}, now vs before: p50 {ms(before.latencies, 50):.1f} -> {ms(now.latencies, 50):.1f} ms, "
            f"CPU mean {1000 * cpu_before:.2f} -> {1000 * cpu_now:.2f} ms per call ({cpu_before / cpu_now:.1f}x less); "
            f"top 10: same ids in the same order for {same_order}/{queries} queries, same set for "
            f"{same_set}/{queries}, {100 * overlap:.1f}% of the ids shared"
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
    top = np.argsort(-scores, axis=1)[:, :K]
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
    from documents.search import hybrid_sql

    sql = hybrid_sql(vector=True, text=False)
    params = [statement_params(user, v) for v in data.queries]

    print("exact top 10 (sequential scan) ...", flush=True)
    started = time.perf_counter()
    exact = exact_top10(conn, sql, params)
    exact_seconds = (time.perf_counter() - started) / len(params)
    by_numpy = numpy_top10(data, readable_chunks)
    agreement = sum(len(set(a) & set(b)) for a, b in zip(exact, by_numpy, strict=True)) / (K * len(exact))
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
        configs = product_configs(data, user, default_ef) + sql_configs(conn, args, sql, params, default_ef)
        measure(configs, len(params), args.rounds, args.seed)
        busy = 100 * (machine_cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        lines = print_table(build, configs, exact)
        lines += before_and_now(configs[:4], len(params))
        lines.append(
            f"(timing: loadavg {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; machine busy "
            f"{busy:.0f}% of one core meanwhile, this client and Postgres included)"
        )
        print("\n".join(lines), flush=True)
        report += ["", *lines]
        if not plans:
            settings_ = [f"hnsw.ef_search = {default_ef}", "hnsw.iterative_scan = relaxed_order"]
            plans = explain(conn, sql, params[0], settings_)

    print()
    print("=" * 100)
    print(f"command: {command}")
    print(f"machine: nproc={len(os.sched_getaffinity(0))}; {load_line}")
    print(stats)
    print(
        f"exact top 10: {1000 * exact_seconds:.0f} ms per query by sequential scan; numpy agreement {100 * agreement:.2f}%"
    )
    print(f"latency: {args.rounds} x {len(params)} queries per configuration; SQL rows time the statement and "
          "its fetch only, product rows the whole call (Hit objects included); CPU: this process's "
          "time.process_time per call, PostgreSQL's excluded")  # fmt: skip
    print("\n".join(report))
    print()
    print("plan of the product's vector-only statement (ef_search from settings, relaxed_order), first query:")
    print("\n".join(f"    {line}" for line in plans))
    final = current_index(conn)
    print(f"index left in {BENCH_DB}: {final}")
    print(f"total run time {(time.monotonic() - run_started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
