"""Answer-quality benchmark: the "not found" gate, the answers of each mode, and cheap retrieval choices.

On the labelled sets in eval/ (``handbook.jsonl``: 54 questions over docs/, 14 of them not
answerable from it; ``pydoc.jsonl``: 130 questions over the pydoc corpus of bench/corpus.py, ~5,300
chunks of 75 standard-library modules, 40 of them not answerable, 30 near-domain), with the
product's own retrieval (``chat.evaluation``, what ``manage.py eval`` runs); ``handbook_users``: 90
questions over docs/ as people type them (eval/README.md):

1. the gate: the old rule (a passage with cosine >= 0.2 or a full-text match) and the calibrated
   one (documents/relevance.py), on the same retrieved passages: not-found accuracy on the
   unanswerable questions and the false not-found rate on the answerable ones; hit@5, MRR, key
   recall and retrieval latency;
2. with ``--answers``: every question answered as the chat does, in the offline default (extractive)
   and, with ``--local``, by the local SmolLM2 model: answer-level key recall, answers with a number,
   name, quote or link no cited passage holds (the model's own text, before any fallback), answers
   replaced by the extractive one, first visible text p50/p95 (retrieval included);
3. with ``--experiments``: chunk size and overlap, the section's heading path in the embedded
   chunk (CHUNK_WITH_SECTION), each corpus ingested again per setting into its own collection, and
   the fusion weights of the vector and full-text halves (query time only).

Quality figures do not depend on the machine's load; the latency column does (it waits for a quiet
machine first). Data live in the database ``docchat_bench_quality`` of the embedded PostgreSQL; the
pydoc collections are reused by the next run, the handbook is ingested afresh (docs/ changes). Run from the project folder::

    .venv/bin/python bench/quality.py [--answers [--local]] [--experiments]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as a file: the project root first on sys.path (see bench/common.py)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import (
    ROOT,
    add_wait_quiet_argument,
    command_line,
    print_header,
    print_heading,
    setup_django,
    wait_until_quiet,
)

BENCH_DB = "docchat_bench_quality"
SETS = ("handbook", "pydoc")
ANSWER_SETS = ("handbook", "handbook_users")  # both over the handbook corpus
# (chunk tokens, overlap tokens, heading path embedded): the product's default first.
CHUNKINGS = ((200, 40, False), (200, 40, True), (128, 24, False), (128, 24, True), (250, 50, False))
BEFORE_CHUNKING = (200, 40, False)
WEIGHTS = ((1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (1.0, 0.5), (1.0, 2.0))  # (vector, full text)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", action="store_true", help="also chunking and fusion weights")
    parser.add_argument("--answers", action="store_true", help="also the answers (offline default)")
    parser.add_argument("--local", action="store_true", help="with --answers: the local SmolLM2 model too (slow)")
    parser.add_argument("--k", type=int, default=5)
    add_wait_quiet_argument(parser)
    return parser.parse_args()


def corpus_for(name: str):
    from bench.corpus import PYDOC, Corpus

    if name == "pydoc":
        return PYDOC
    files = tuple(sorted(path.name for path in (ROOT / "docs").glob("*.md")))
    return Corpus("handbook", "bench-handbook", files, lambda file: (ROOT / "docs" / file).read_text(), ())


def collection_for(set_name: str, chunking: tuple[int, int, bool], owner):
    """The set's corpus ingested with ``chunking`` into a collection of its own (reused if there)."""
    from django.conf import settings

    from bench.corpus import ensure_corpus
    from documents.models import Collection

    tokens, overlap, with_section = chunking
    corpus = corpus_for(set_name)
    default = current_chunking()
    name = f"{corpus.collection}-{tokens}-{overlap}-{int(with_section)}"
    if set_name == "handbook":  # docs/ changes with the code: ingested afresh, no stale versions
        Collection.objects.filter(name=name).delete()
    settings.CHUNK_TOKENS, settings.CHUNK_OVERLAP_TOKENS, settings.CHUNK_WITH_SECTION = chunking
    try:
        ensure_corpus(dataclasses.replace(corpus, collection=name), owner)
    finally:
        settings.CHUNK_TOKENS, settings.CHUNK_OVERLAP_TOKENS, settings.CHUNK_WITH_SECTION = default
    Collection.objects.filter(name=name).update(owner=owner, is_public=False)
    return Collection.objects.get(name=name)


def current_chunking() -> tuple[int, int, bool]:
    from django.conf import settings

    return settings.CHUNK_TOKENS, settings.CHUNK_OVERLAP_TOKENS, settings.CHUNK_WITH_SECTION


def old_gate(outcome) -> bool:
    """The rule before issue 13: any passage with cosine >= 0.2, or any full-text match."""
    return any(hit.similarity >= 0.2 or hit.keyword_match for hit in outcome.retrieval.hits)


def figures(outcomes, k: int, relevant: Callable | None = None) -> dict:
    """``summarise``'s figures; with ``relevant``, of the same passages judged by that rule instead."""
    from chat.evaluation import summarise
    from documents.relevance import ANSWER, NOT_FOUND

    if relevant is not None:
        outcomes = [dataclasses.replace(o, verdict=ANSWER if relevant(o) else NOT_FOUND) for o in outcomes]
    return summarise(outcomes, k)


def row(label: str, f: dict, k: int) -> str:
    return (
        f"{label:<34} {f[f'hit@{k}']:>6.3f} {f['mrr']:>6.3f} {f['key_recall']:>6.3f} "
        f"{f['not_found_accuracy']:>7.3f} {f['false_not_found']:>6.3f} {f['p50_ms']:>7.1f} {f['p95_ms']:>7.1f}"
    )


HEADER = f"{'':<34} {'hit@k':>6} {'MRR':>6} {'keys':>6} {'NF acc':>7} {'false':>6} {'p50 ms':>7} {'p95 ms':>7}"


ANSWER_HEADER = (
    f"{'':<34} {'NF acc':>7} {'as known':>8} {'false':>6} {'unsure':>6} {'keys':>6} {'answer keys':>11} "
    f"{'invented':>8} {'replaced':>8} {'text p50':>8} {'text p95':>8}"
)


def answer_row(label: str, f: dict) -> str:
    return (
        f"{label:<34} {f['not_found_accuracy']:>7.3f} {1 - f['not_answered_as_known']:>8.3f} "
        f"{f['false_not_found']:>6.3f} {f['answerable_unsure']:>6.3f} {f['key_recall']:>6.3f} "
        f"{f['answer_key_recall']:>11.3f} {f['answers_with_unsupported_claims']:>8} {f['answers_replaced']:>8} "
        f"{f['first_text_p50_s']:>7.2f}s {f['first_text_p95_s']:>7.2f}s"
    )


def answers_section(owner, handbook, args) -> None:
    """Each question answered as the chat does, in the offline default and (--local) by SmolLM2."""
    from chat.evaluation import answer_all, evaluate, load_cases, summarise
    from chat.llm import provider_named

    print("\n2. Answers (as known: unanswerable answered as if the documents held the answer; keys: all in")
    print("   the top k; answer keys: all in the answer's text; invented: answers with a number, name, quote")
    print("   or link no cited passage holds, before any fallback; replaced: by the extractive answer)\n")
    print_heading(ANSWER_HEADER)
    modes = ["extractive", "local"] if args.local else ["extractive"]
    for name in ANSWER_SETS:
        cases = load_cases(ROOT / "eval" / f"{name}.jsonl")
        for mode in modes:
            outcomes = evaluate(owner, cases, k=args.k, collections=[handbook.pk])
            answer_all(outcomes, provider_named(mode))
            print(answer_row(f"{name}: {mode}", summarise(outcomes, args.k)), flush=True)


def main() -> int:
    args = parse_args()
    print_header(command_line())
    setup_django(BENCH_DB)
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from chat.evaluation import evaluate, load_cases

    owner, _ = get_user_model().objects.get_or_create(username="bench-quality")
    collections = {name: collection_for(name, current_chunking(), owner) for name in SETS}
    before = {name: collection_for(name, BEFORE_CHUNKING, owner) for name in SETS}
    cases = {name: load_cases(ROOT / "eval" / f"{name}.jsonl") for name in SETS}
    print(wait_until_quiet(args.wait_quiet))

    print(f"\n1. Before and now (k={args.k}; NF acc: unanswerable answered 'not found'; false: answerable answered")
    print("   'not found'; keys: all keys in the top k; latency: embed + search + gate, one question at a time)")
    print(f"   before: chunks embedded without their heading path, the old gate; now: {current_chunking()}\n")
    print_heading(HEADER)
    for name in SETS:
        old = evaluate(owner, cases[name], k=args.k, collections=[before[name].pk])
        now = evaluate(owner, cases[name], k=args.k, collections=[collections[name].pk])
        print(row(f"{name}: before", figures(old, args.k, old_gate), args.k))
        print(row(f"{name}: text chunks, calibrated gate", figures(old, args.k), args.k))
        print(row(f"{name}: now", figures(now, args.k), args.k))
    if args.answers:
        answers_section(owner, collections["handbook"], args)
    if not args.experiments:
        return 0

    print("\n2. Fusion weights (vector, full text), current chunking; a weight of 0 only puts that half's")
    print("   candidates after the other's, by their own order\n")
    print_heading(HEADER)
    for vector_weight, text_weight in WEIGHTS:
        settings.RETRIEVAL_VECTOR_WEIGHT, settings.RETRIEVAL_TEXT_WEIGHT = vector_weight, text_weight
        for name in SETS:
            outcomes = evaluate(owner, cases[name], k=args.k, collections=[collections[name].pk])
            print(row(f"{name}: {vector_weight:g} / {text_weight:g}", figures(outcomes, args.k), args.k))
    settings.RETRIEVAL_VECTOR_WEIGHT, settings.RETRIEVAL_TEXT_WEIGHT = 1.0, 1.0

    print("\n3. Chunking (tokens / overlap / heading path embedded), each corpus ingested again\n")
    for chunking in CHUNKINGS:
        for name in SETS:
            collection = collection_for(name, chunking, owner)
            outcomes = evaluate(owner, cases[name], k=args.k, collections=[collection.pk])
            tokens, overlap, with_section = chunking
            label = f"{name}: {tokens} / {overlap} / {'heading' if with_section else 'text only'}"
            print(row(label, figures(outcomes, args.k), args.k), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
