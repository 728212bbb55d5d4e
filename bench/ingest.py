"""Ingestion benchmark: engines, the pipeline and upload → searchable, side by side in one run.

The corpus is 60 pages of HTML documentation: ``pydoc``'s HTML pages of 60 standard-library modules
(``bench/corpus.py``, ``pydoc-html``; ~4 MB, ~2,500 chunks), ingested into fresh collections of the
database ``docchat_bench_ingest`` of the embedded PostgreSQL.

1. texts: the chunks the pipeline stores, made with its own ``extract_sections`` + ``chunk_sections``.
2. raw encode: each engine (``documents/engines.py``: torch, onnx, onnx-int8) with
   ``INGEST_ENGINE_THREADS`` threads (all cores), one call over all chunk texts: chunks/s.
3. equivalence to PyTorch on all those chunks: cosine per chunk (mean, min); known-item retrieval
   (a chunk's first sentence as the question, the chunk as the answer; exact search over all
   chunks): hit@5 and MRR with each engine, and with the vectors stored by torch and the questions
   embedded by onnx-int8 (an index not yet re-embedded after a switch).
4. pipeline: ``documents.ingest.do_process_documents`` (the worker's code, in this process) over
   all 60 files with the configured engine and all cores: chunks/s, / raw encode of the same engine,
   per-stage seconds; and the old worker's set-up: torch on 1 thread, one document at a time.
5. end to end with a real ``manage.py worker`` process: the 60 files queued as an upload queues
   them, until all are ready (searchable); then a one-page document, 5 times, queued → ready.
6. 200 concurrent query embeddings through the web process's batcher (``embed_query``), each
   engine with 1 and 2 engine threads, for two question sets: the pydoc questions of
   ``bench/corpus.py`` (~20 tokens) and the tiny corpus's (~13 tokens, those of the concurrency
   benchmark that gave the old 0.44 s figure); then onnx-int8 with ``EMBEDDING_ENGINE_THREADS``
   threads again while the worker process ingests the corpus (it runs at nice 10: chats first).

The raw encode of the configured engine is run before and after the pipeline. Run from the
project folder (~6 minutes on 2 cores; waits for a quiet machine first)::

    .venv/bin/python bench/ingest.py [--skip-old]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file: the project root, not bench/, first on sys.path (see bench/common.py)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import (
    ROOT,
    add_wait_quiet_argument,
    command_line,
    print_header,
    setup_django,
    use_bench_database,
    wait_until_quiet,
)
from bench.corpus import PYDOC_HTML, TINY

BENCH_DB = "docchat_bench_ingest"
COLLECTION_PREFIX = "bench-ingest-"
OWNER = "bench-ingest"
ENGINE_NAMES = ("torch", "onnx", "onnx-int8")
ONE_PAGE = (
    "# Boiler room\n\nThe boiler in building C is serviced every October by Northwind Heating. "
    "Its pressure must stay between 1.2 and 1.8 bar; the gauge is left of the door. "
    "If the pilot light goes out, call the facilities desk on extension 4410 before relighting it.\n\n"
    "## Keys\n\nThe key hangs in the porter's lodge and is signed out in the blue book.\n"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-old", action="store_true", help="skip the old worker set-up (torch, 1 thread)")
    parser.add_argument("--queries", type=int, default=200, help="concurrent questions embedded at once")
    add_wait_quiet_argument(parser)
    return parser.parse_args()


# --- helpers ------------------------------------------------------------------------------------
def fresh_collection(name: str):
    """A new empty collection; earlier bench collections (and their chunks) are deleted."""
    from django.contrib.auth import get_user_model

    from documents.models import Collection

    owner, _ = get_user_model().objects.get_or_create(username=OWNER)
    Collection.objects.filter(name__startswith=COLLECTION_PREFIX).delete()
    return Collection.objects.create(name=f"{COLLECTION_PREFIX}{name}", owner=owner)


def register(paths: list[Path], collection, enqueue: bool) -> list[int]:
    from documents.actions import do_add_document

    return [do_add_document(collection, p.name, p.read_bytes(), enqueue=enqueue).document.pk for p in paths]


def pipeline_texts(paths: list[Path]) -> list[str]:
    from django.conf import settings

    from documents.chunking import chunk_sections
    from documents.embedding import count_tokens
    from documents.extract import extract_sections

    texts = []
    for path in paths:
        sections = extract_sections(path.read_bytes(), "text/html")
        drafts = chunk_sections(
            sections,
            max_tokens=settings.CHUNK_TOKENS,
            overlap_tokens=settings.CHUNK_OVERLAP_TOKENS,
            count_tokens=count_tokens,
        )
        texts += [d.text for d in drafts]
    return texts


def raw_encode(engine, texts: list[str]) -> tuple[float, object]:
    from django.conf import settings

    started = time.perf_counter()
    vectors = engine.encode(texts, settings.EMBEDDING_BATCH_SIZE)
    return len(texts) / (time.perf_counter() - started), vectors


def known_items(texts: list[str]) -> tuple[list[str], list[int]]:
    """Questions (a chunk's first sentence, if long enough to be one) and the chunk each comes from."""
    questions, answers = [], []
    for i in range(0, len(texts), 5):
        first = texts[i].split(". ")[0].strip()
        if 40 <= len(first) < len(texts[i]) * 0.8:
            questions.append(first)
            answers.append(i)
    return questions, answers


def hit5_mrr(stored, queries, answers: list[int]) -> tuple[float, float]:
    import numpy as np

    scores = queries @ stored.T
    ranks = [int((scores[q] > scores[q, a]).sum()) + 1 for q, a in enumerate(answers)]
    return float(np.mean([r <= 5 for r in ranks])), float(np.mean([1 / r for r in ranks]))


def worker_process() -> subprocess.Popen:
    env = dict(os.environ)
    use_bench_database(env, BENCH_DB)
    return subprocess.Popen(
        [sys.executable, "manage.py", "worker", "--no-startup-delay"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def upload_until_ready(paths: list[Path], collection, timeout: float) -> float:
    """Seconds from queueing ``paths`` (as an upload does) until every one is ready (polled every 20 ms)."""
    from documents.models import Document

    started = time.perf_counter()
    ids = register(paths, collection, enqueue=True)
    while Document.objects.filter(pk__in=ids, status="ready").count() < len(ids):
        if Document.objects.filter(pk__in=ids, status="failed").exists():
            raise SystemExit("a document failed in the worker")
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"documents not ready after {timeout} s")
        time.sleep(0.02)  # the poll of this measurement, not work
    return time.perf_counter() - started


async def query_burst(questions: list[str]) -> float:
    from documents.embedding import embed_query

    started = time.perf_counter()
    await asyncio.gather(*(embed_query(q) for q in questions))
    return time.perf_counter() - started


def use_engine_here(name: str, threads: int):
    """Make ``name`` this process's engine (what EMBEDDING_ENGINE + a restart would do)."""
    from django.conf import settings

    from documents import embedding, engines

    engine = engines.load(name, threads, settings.EMBEDDING_CACHE_DIR)
    embedding._engine = engine  # the bench swaps engines in one process; the product loads one
    return engine


# --- the run ------------------------------------------------------------------------------------
def main() -> int:
    args = parse_args()
    command = command_line()
    setup_django(BENCH_DB)
    from django.conf import settings

    from documents import engines

    paths = PYDOC_HTML.write(settings.VAR_DIR / "bench-corpus" / PYDOC_HTML.cache)
    texts = pipeline_texts(paths)
    from documents.embedding import count_tokens

    tokens = sum(count_tokens(t) for t in texts)
    threads = settings.INGEST_ENGINE_THREADS
    loaded = {name: engines.load(name, threads, settings.EMBEDDING_CACHE_DIR) for name in ENGINE_NAMES}
    for engine in loaded.values():
        engine.encode(texts[:64], settings.EMBEDDING_BATCH_SIZE)  # warm-up

    print(wait_until_quiet(args.wait_quiet), flush=True)
    print(f"/proc/loadavg: {Path('/proc/loadavg').read_text().strip()}")
    print_header(command)
    print(
        f"corpus: {len(paths)} HTML pages, {sum(p.stat().st_size for p in paths) / 1e6:.1f} MB, "
        f"{len(texts)} chunks of {tokens / len(texts):.0f} tokens on average; engine threads {threads}; "
        f"configured engine {settings.EMBEDDING_ENGINE}\n",
        flush=True,
    )

    print("## raw encode (one call over all chunks)")
    raw, vectors = {}, {}
    for name, engine in loaded.items():
        raw[name], vectors[name] = raw_encode(engine, texts)
        print(f"  {name:<10} {raw[name]:6.1f} chunks/s", flush=True)

    print("\n## equivalence to torch, and retrieval (known items, exact search over all chunks)")
    questions, answers = known_items(texts)
    print(f"  {len(questions)} questions")
    for name in ENGINE_NAMES:
        cos = (vectors[name] * vectors["torch"]).sum(axis=1)
        hit, mrr = hit5_mrr(vectors[name], loaded[name].encode(questions, 32), answers)
        print(f"  {name:<10} cosine mean {cos.mean():.4f} min {cos.min():.4f}   hit@5 {hit:.3f}  MRR {mrr:.3f}")
    hit, mrr = hit5_mrr(vectors["torch"], loaded["onnx-int8"].encode(questions, 32), answers)
    print(f"  mixed: torch-stored chunks, onnx-int8 questions             hit@5 {hit:.3f}  MRR {mrr:.3f}")

    print("\n## pipeline (do_process_documents, in this process, all files as one stream)")
    from documents.ingest import do_process_documents

    configured = settings.EMBEDDING_ENGINE
    use_engine_here(configured, threads)
    ids = register(paths, fresh_collection("pipeline"), enqueue=False)
    started = time.perf_counter()
    stats = do_process_documents(ids)
    seconds = time.perf_counter() - started
    rate = stats.chunks / seconds
    print(
        f"  {configured}, {threads} threads: {stats.chunks} chunks in {seconds:.1f} s = {rate:.1f} chunks/s "
        f"(/ raw {rate / raw[configured]:.2f}); stages: extract {stats.extract:.1f} s, chunk {stats.chunk:.1f} s "
        f"(both on the extraction thread, overlapped), embed {stats.embed:.1f} s, store {stats.store:.1f} s",
        flush=True,
    )
    again, _ = raw_encode(loaded[configured], texts)
    print(
        f"  raw encode {configured} again: {again:.1f} chunks/s (pipeline / mean raw {rate / ((again + raw[configured]) / 2):.2f})"
    )
    if not args.skip_old:
        use_engine_here("torch", 1)
        ids = register(paths, fresh_collection("old"), enqueue=False)
        started = time.perf_counter()
        for document_id in ids:
            do_process_documents([document_id])
        seconds = time.perf_counter() - started
        print(
            f"  old set-up (torch, 1 thread, one document at a time): {seconds:.1f} s = {len(texts) / seconds:.1f} chunks/s"
        )

    print("\n## end to end: a real worker process; queued as an upload queues → all ready")
    worker = worker_process()
    try:
        from documents.recovery import live_workers

        while live_workers() == 0:
            time.sleep(0.1)  # the worker loads its engine and writes its first heartbeat
        print(f"  60 pages: {upload_until_ready(paths, fresh_collection('upload'), 600):.1f} s", flush=True)
        single = []
        for i in range(5):
            page = Path(tempfile.mkdtemp()) / f"boiler-{i}.md"
            page.write_text(ONE_PAGE + f"\nRevision {i}.\n")
            single.append(upload_until_ready([page], fresh_collection(f"one-{i}"), 60))
        print(f"  one page: median {statistics.median(single):.2f} s, max {max(single):.2f} s", flush=True)

        print(f"\n## {args.queries} concurrent query embeddings (embed_query: the web process's batcher)")
        sets = {"pydoc": PYDOC_HTML, "tiny": TINY}
        for label, corpus in sets.items():
            questions = [corpus.numbered(i, "q") for i in range(args.queries)]
            mean_tokens = sum(count_tokens(q) for q in questions) / len(questions)
            for name in ENGINE_NAMES:
                for engine_threads in (1, 2):
                    use_engine_here(name, engine_threads)
                    asyncio.run(query_burst(questions[:8]))
                    bursts = [asyncio.run(query_burst(questions)) for _ in range(3)]
                    print(
                        f"  {label} questions ({mean_tokens:.0f} tokens), {name:<10} {engine_threads} thread(s): "
                        f"{statistics.median(bursts):.3f} s (of 3: {', '.join(f'{b:.3f}' for b in bursts)})",
                        flush=True,
                    )
        questions = [PYDOC_HTML.numbered(i, "q") for i in range(args.queries)]
        use_engine_here("onnx-int8", settings.EMBEDDING_ENGINE_THREADS)
        ids = register(paths, fresh_collection("during"), enqueue=True)
        during = []
        from documents.models import Document

        while Document.objects.filter(pk__in=ids).exclude(status="ready").exists():
            during.append(asyncio.run(query_burst(questions)))
        print(
            f"  pydoc questions, onnx-int8, {settings.EMBEDDING_ENGINE_THREADS} thread(s), while the worker ingests the 60 pages: median {statistics.median(during):.3f} s, "
            f"max {max(during):.3f} s over {len(during)} bursts"
        )
    finally:
        worker.terminate()
        worker.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
