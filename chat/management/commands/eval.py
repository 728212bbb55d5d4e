from __future__ import annotations

from json import dumps
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from chat.evaluation import EvalSetError, Outcome, answer_all, evaluate, load_cases, summarise
from chat.llm import get_provider, provider_named
from documents.models import Collection


class Command(BaseCommand):
    help = (
        "Measure answer quality on a labelled question set (JSON lines: q, source, keys): hit@k, MRR, "
        "key recall, not-found accuracy, false not-found rate and latency of the product's own "
        "retrieval and relevance gate; with --answers, also the configured model's answers."
    )

    def add_arguments(self, parser):
        parser.add_argument("qa_file", type=Path, help="the labelled set, e.g. eval/handbook.jsonl")
        parser.add_argument("--user", help=f"search as this user (default: {settings.DEMO_USERNAME})")
        parser.add_argument(
            "--collection",
            action="append",
            default=[],
            help="search only this collection (by name; repeat for several; default: all the user reads)",
        )
        parser.add_argument("--k", type=int, default=settings.RETRIEVAL_TOP_K, help="passages per question")
        parser.add_argument("--answers", action="store_true", help="also answer each question as the chat does")
        parser.add_argument(
            "--provider",
            choices=settings.LLM_PROVIDER_NAMES,
            help=f"with --answers: the answer mode (default: the configured one, {settings.LLM_PROVIDER})",
        )
        parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
        parser.add_argument("--show", action="store_true", help="list every question's outcome")

    def handle(self, *args, qa_file: Path, user, collection, k, answers, provider, json: bool, show, **options):
        if k < 1:
            raise CommandError("--k must be at least 1")
        account = self._user(user or settings.DEMO_USERNAME)
        collections = self._collections(account, collection) if collection else None
        try:
            cases = load_cases(qa_file)
        except (OSError, EvalSetError) as exc:
            raise CommandError(str(exc)) from None
        outcomes = evaluate(account, cases, k=k, collections=collections)
        if answers:
            answer_all(outcomes, provider_named(provider) if provider else get_provider())
        figures = summarise(outcomes, k)
        if show:
            for outcome in outcomes:
                self.stdout.write(describe(outcome))
        self.stdout.write(dumps(figures) if json else _table(figures))

    def _user(self, username: str):
        account = get_user_model().objects.filter(username=username).first()
        if account is None:
            raise CommandError(f"no user named {username!r}")
        return account

    def _collections(self, account, names: list[str]) -> list[int]:
        readable = Collection.objects.readable_by(account)
        found = dict(readable.filter(name__in=names).values_list("name", "pk"))
        missing = [name for name in names if name not in found]
        if missing:
            raise CommandError(f"no collection {', '.join(map(repr, missing))} that {account.username} may read")
        return list(found.values())


def describe(outcome: Outcome) -> str:
    """One line per question: what was expected and what the gate and the ranking did."""
    case = outcome.case
    verdict = "not found" if outcome.not_found else "unsure" if outcome.unsure else "found"
    if case.answerable:
        place = f"rank {outcome.rank}" if outcome.rank else "source missing"
        mark = "ok " if outcome.rank and not outcome.not_found and not outcome.unsure else "MISS"
        line = f"{mark} {verdict:<9} {place:<14} {case.query!r}"
    else:
        mark = "ok " if outcome.not_found else "MISS"
        line = f"{mark} {verdict:<9} {'(unanswerable)':<14} {case.question}"
    evidence = outcome.retrieval.evidence
    line = f"{line}  [{evidence.describe()}]"
    if outcome.answer:
        line += f"\n      answer: {' '.join(outcome.answer.split())[:400]}"
    return line


def _table(figures: dict) -> str:
    return "\n".join(f"{name:<22} {'-' if value is None else value}" for name, value in figures.items())
