"""Our Prometheus metrics (exported with django-prometheus' own at /metrics) and the in-process
rolling windows the dashboard's percentiles come from (p50/p95 over 5 minutes).

The product reports through the small ``record_*`` and ``connection_*`` functions only (a counter
increment, a histogram observation, an append), and this module imports nothing of the project,
so any app can report without depending on the monitoring app. Each figure has one store: the
dashboard reads the same counters Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections import deque
from statistics import quantiles

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
WINDOW_SECONDS = 300

# Answers: latency by stage, outcome, volume.
TIME_TO_FIRST_TOKEN = Histogram(
    "docchat_time_to_first_token_seconds", "Question to first answer token", buckets=LATENCY_BUCKETS
)
ANSWER_TOTAL = Histogram("docchat_answer_seconds", "Question to finished answer", buckets=LATENCY_BUCKETS)
RETRIEVAL = Histogram("docchat_retrieval_seconds", "Hybrid search time", buckets=LATENCY_BUCKETS)
EMBEDDING = Histogram("docchat_query_embedding_seconds", "Query embedding time", buckets=LATENCY_BUCKETS)
TOKENS = Counter("docchat_tokens_streamed_total", "Answer deltas streamed to clients")
ANSWERS = Counter("docchat_answers_total", "Finished answers by status", ["status"])
ERRORS = Counter("docchat_errors_total", "Error frames sent, by code", ["code"])
UNSUPPORTED_SENTENCES = Counter(
    "docchat_unsupported_sentences_total", "Sentences of generated answers stating what their sources do not"
)
GROUNDING_FALLBACKS = Counter(
    "docchat_grounding_fallbacks_total", "Generated answers replaced by the extractive one (nothing supported)"
)

# Load on this process: sockets, generation slots, the event loop. With several worker processes
# (Prometheus multiprocess mode, set up by ``manage.py serve``) a scrape adds up the live workers'
# loads and shows the worst loop lag.
ACTIVE_CONNECTIONS = Gauge(
    "docchat_websocket_connections", "Open chat WebSocket connections", multiprocess_mode="livesum"
)
ACTIVE_GENERATIONS = Gauge(
    "docchat_active_generations", "Answers holding a generation slot", multiprocess_mode="livesum"
)
QUEUE_DEPTH = Gauge(
    "docchat_generation_queue_depth", "Answers waiting for a generation slot", multiprocess_mode="livesum"
)
UNSAVED_ANSWERS = Gauge(
    "docchat_unsaved_answers",
    "Finished answers whose final write failed, being retried in the background",
    multiprocess_mode="livesum",
)
DETACHED_ANSWERS = Gauge(
    "docchat_detached_answers",
    "Answers being written with no client listening (their socket went away; only stop cancels)",
    multiprocess_mode="livesum",
)
LOOP_LAG = Gauge(
    "docchat_event_loop_lag_seconds", "How late the event loop ran a 0.5 s timer (last sample)", multiprocess_mode="max"
)

# Dependencies: the DB pools and the circuit breakers.
POOL_SIZE = Gauge("docchat_db_pool_size", "Connections the pools hold", multiprocess_mode="livesum")
POOL_IN_USE = Gauge("docchat_db_pool_in_use", "Pool connections lent out", multiprocess_mode="livesum")
POOL_WAITING = Gauge("docchat_db_pool_waiting", "Requests waiting for a pool connection", multiprocess_mode="livesum")
BREAKER_OPEN = Gauge(
    "docchat_circuit_breaker_open", "1 if the breaker is open (or half-open), else 0", ["name"], multiprocess_mode="max"
)


class Rolling:
    """Recent observations (time, value) for percentiles over the last ``WINDOW_SECONDS``."""

    def __init__(self) -> None:
        self.values: deque[tuple[float, float]] = deque(maxlen=20_000)

    def add(self, value: float) -> None:
        self.values.append((time.time(), value))

    def summary(self) -> dict:
        cutoff = time.time() - WINDOW_SECONDS
        recent = sorted(v for t, v in self.values if t >= cutoff)
        if not recent:
            return {"count": 0, "p50": None, "p95": None}
        if len(recent) == 1:
            return {"count": 1, "p50": round(recent[0], 4), "p95": round(recent[0], 4)}
        cuts = quantiles(recent, n=100, method="inclusive")
        return {
            "count": len(recent),
            "p50": round(cuts[49], 4),
            "p95": round(cuts[94], 4),
        }


rolling = {name: Rolling() for name in ("first_token", "total", "retrieval", "embedding")}


def connection_opened() -> None:
    ACTIVE_CONNECTIONS.inc()


def connection_closed() -> None:
    ACTIVE_CONNECTIONS.dec()


def record_answer(status: str, timings: dict[str, float], deltas: int) -> None:
    """One finished answer: its status, stage timings (seconds since the question) and deltas."""
    ANSWERS.labels(status).inc()
    TOKENS.inc(deltas)
    if "first_token" in timings:
        TIME_TO_FIRST_TOKEN.observe(timings["first_token"])
        rolling["first_token"].add(timings["first_token"])
    if "total" in timings:
        ANSWER_TOTAL.observe(timings["total"])
        rolling["total"].add(timings["total"])
    if "embedding" in timings and "slot" in timings:
        took = timings["embedding"] - timings["slot"]
        EMBEDDING.observe(took)
        rolling["embedding"].add(took)
    if "retrieval" in timings and "embedding" in timings:
        took = timings["retrieval"] - timings["embedding"]
        RETRIEVAL.observe(took)
        rolling["retrieval"].add(took)


def record_error(code: str) -> None:
    ERRORS.labels(code).inc()


def record_grounding(unsupported: int, fell_back: bool) -> None:
    """The grounding check of one generated answer: its unsupported sentences, and whether the
    answer shown is the extractive one instead."""
    UNSUPPORTED_SENTENCES.inc(unsupported)
    if fell_back:
        GROUNDING_FALLBACKS.inc()


def grounding_summary() -> dict[str, int]:
    return {
        "unsupported_sentences": int(value(UNSUPPORTED_SENTENCES)),
        "fallbacks": int(value(GROUNDING_FALLBACKS)),
    }


def latency_summary() -> dict:
    return {name: window.summary() for name, window in rolling.items()}


# --- reading the figures back (dashboard, alerts) ------------------------------------------------
def values(metric: MetricWrapperBase, label: str | None = None) -> dict[str, float]:
    """Current value of ``metric`` in this process, by the value of ``label`` ("" if unlabelled)."""
    wanted = {metric._name, metric._name + "_total"}  # counters export NAME_total (and NAME_created)
    return {
        sample.labels.get(label, "") if label else "": sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name in wanted
    }


def value(metric: MetricWrapperBase) -> float:
    return sum(values(metric).values())


def errors_by_code() -> dict[str, int]:
    return {code: int(n) for code, n in values(ERRORS, "code").items()}


def answers_finished() -> int:
    return int(value(ANSWERS))


def tokens_streamed() -> int:
    return int(value(TOKENS))


def websocket_connections() -> int:
    return int(value(ACTIVE_CONNECTIONS))


def answer_unsaved() -> None:
    UNSAVED_ANSWERS.inc()


def answer_saved_late() -> None:
    UNSAVED_ANSWERS.dec()


def answer_detached() -> None:
    DETACHED_ANSWERS.inc()


def answer_reattached() -> None:
    """A detached answer has a listener again, or has ended."""
    DETACHED_ANSWERS.dec()


def detached_answers() -> int:
    return int(value(DETACHED_ANSWERS))
