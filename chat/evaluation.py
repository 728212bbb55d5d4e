"""Answer quality on a labelled question set: the product's own retrieval, gate and (optionally) model.

A set is a JSON-lines file, one question per line::

    {"q": "How do I ...?", "source": "operations.md", "keys": ["manage.py search"]}
    {"q": "Can I log in with SAML?", "source": null, "keys": []}
    {"q": "and the default?", "source": "configuration.md", "keys": ["10"], "after": ["pool size?"]}

``source`` names the document that answers (its file name or title; ``null``: nothing in the
collection answers, so the right outcome is "not found"); ``keys`` are strings the answering
passage contains; ``after`` (optional) lists the questions asked before in the same conversation (a
follow-up is searched and answered with them, as in the chat). ``manage.py eval`` runs it; the suite runs the shipped set over docs/.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from documents.embedding import encode
from documents.models import Document
from documents.relevance import ANSWER, NOT_FOUND, UNSURE, Retrieval, retrieve
from documents.search import Hit

from .answering import grounding_of, quoted_answer, settle
from .grounding import Support, normal, nothing_supported
from .llm.base import Generation, LLMProvider
from .prompting import (
    FALLBACK_PREFIX,
    NOT_FOUND_ANSWER,
    UNSURE_PREFIX,
    Turn,
    cited_numbers,
    prompt_for,
    retrieval_query,
)


class EvalSetError(ValueError):
    """The question file is not a valid set (the message names the line)."""


@dataclass(frozen=True)
class Case:
    question: str
    source: str | None
    keys: tuple[str, ...]
    after: tuple[str, ...] = ()  # the questions asked before it in its conversation

    @property
    def answerable(self) -> bool:
        return self.source is not None

    @property
    def history(self) -> list[Turn]:
        return [Turn("user", question) for question in self.after]

    @property
    def query(self) -> str:
        """What the chat searches for: the question, with the previous one for a follow-up."""
        return retrieval_query(self.question, self.history)


@dataclass
class Outcome:
    case: Case
    retrieval: Retrieval
    rank: int | None  # 1-based rank of the first passage of the source document in the top k
    source_document: int | None  # that document's id
    keys_found: bool  # every key occurs in the top-k passages
    seconds: float  # embedding + search + gate
    answer: str = ""
    first_token: float | None = None
    cited: list[int] = field(default_factory=list)
    prompt_hits: list[Hit] = field(default_factory=list)  # the passages the model was given
    vector: list[float] = field(default_factory=list)  # the query's embedding
    support: Support = field(default_factory=Support)

    verdict: str = ANSWER  # the chat's (chat.answering.settle)

    @property
    def not_found(self) -> bool:
        return self.verdict == NOT_FOUND

    @property
    def unsure(self) -> bool:
        """Answered with the closest passages and a word that they may not answer."""
        return self.verdict == UNSURE


def load_cases(path: Path) -> list[Case]:
    """The set in ``path``; raises ``EvalSetError`` naming the first bad line."""
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            cases.append(check_case(line, f"{path.name}:{number}"))
    if not cases:
        raise EvalSetError(f"{path.name} holds no questions")
    return cases


def check_case(line: str, where: str) -> Case:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EvalSetError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("q"), str) or not raw["q"].strip():
        raise EvalSetError(f'{where}: needs "q", a non-empty question')
    source, keys, after = raw.get("source"), raw.get("keys", []), raw.get("after", [])
    if source is not None and not isinstance(source, str):
        raise EvalSetError(f'{where}: "source" must be a file name or null')
    if not isinstance(keys, list) or not all(isinstance(key, str) and key.strip() for key in keys):
        raise EvalSetError(f'{where}: "keys" must be a list of non-empty strings')
    if not isinstance(after, list) or not all(isinstance(q, str) and q.strip() for q in after):
        raise EvalSetError(f'{where}: "after" must be a list of questions')
    return Case(raw["q"].strip(), source, tuple(keys), tuple(q.strip() for q in after))


def document_names(document_ids: set[int]) -> dict[int, set[str]]:
    """The names a set's ``source`` may use for each document: file name and title, lower case."""
    names: dict[int, set[str]] = {}
    for document in Document.objects.filter(pk__in=document_ids).only("title", "source_path", "file"):
        candidates = (document.title, Path(document.source_path).name, Path(document.file.name or "").name)
        names[document.pk] = {name.lower() for name in candidates if name}
    return names


def evaluate(user, cases: list[Case], *, k: int, collections: list[int] | None) -> list[Outcome]:
    """Retrieve for every case as ``user`` would (the same search and relevance gate as a chat)."""
    outcomes = []
    for case in cases:
        started = time.perf_counter()
        vector = encode([case.query])[0]
        retrieval = retrieve(user, case.query, vector, k=k, collections=collections)
        seconds = time.perf_counter() - started
        outcomes.append(Outcome(case, retrieval, None, None, False, seconds, vector=vector))
    asyncio.run(_judge_all(outcomes))
    names = document_names({hit.document_id for o in outcomes for hit in o.retrieval.hits})
    for outcome in outcomes:
        outcome.rank = _rank(outcome, names)
        if outcome.rank is not None:
            outcome.source_document = outcome.retrieval.hits[outcome.rank - 1].document_id
        outcome.keys_found = _keys_found(outcome)
    return outcomes


async def _judge_all(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        outcome.verdict = await settle(outcome.retrieval, outcome.vector)


def _rank(outcome: Outcome, names: dict[int, set[str]]) -> int | None:
    source = (outcome.case.source or "").lower()
    for rank, hit in enumerate(outcome.retrieval.hits, start=1):
        if source in names.get(hit.document_id, ()):
            return rank
    return None


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def _keys_found(outcome: Outcome) -> bool:
    text = _normal(" ".join(hit.text for hit in outcome.retrieval.hits))
    return all(_normal(key) in text for key in outcome.case.keys)


def answer_all(outcomes: list[Outcome], provider: LLMProvider) -> None:
    """Ask the model for every case the gate let through, with the chat's own prompt."""
    asyncio.run(_answer_all(outcomes, provider))


async def _answer_all(outcomes: list[Outcome], provider: LLMProvider) -> None:
    if provider.generative:
        await _warm_up(provider)
    for outcome in outcomes:
        started = time.perf_counter()
        await _answer(outcome, provider)
        # First visible text, from the question: retrieval, then the first delta (or the whole
        # extractive answer, which is sent at once).
        outcome.first_token = outcome.seconds + (outcome.first_token or time.perf_counter() - started)
        outcome.cited = cited_numbers(outcome.answer)


async def _answer(outcome: Outcome, provider: LLMProvider) -> None:
    """What the chat answers (chat/answering.py): not found; the passages' own sentences (no model,
    or an unsure match); or the model's answer, checked, replaced by those sentences if nothing
    of it held up."""
    case, retrieval = outcome.case, outcome.retrieval
    if outcome.not_found:
        outcome.answer = NOT_FOUND_ANSWER
        return
    outcome.prompt_hits = retrieval.hits
    if not provider.generative or outcome.unsure:
        prefix = UNSURE_PREFIX if outcome.unsure else ""
        outcome.answer = await quoted_answer(case.question, case.history, retrieval.hits, outcome.vector, prefix)
    else:
        count = await provider.prompt_counter()
        messages, outcome.prompt_hits = prompt_for(provider, case.question, case.history, retrieval.hits, count)
        started = time.perf_counter()
        parts: list[str] = []
        async for delta in provider.stream(messages, Generation()):
            if not parts:
                outcome.first_token = time.perf_counter() - started
            parts.append(delta)
        outcome.answer = "".join(parts)
    outcome.support = grounding_of(outcome.answer, outcome.prompt_hits, case.question)
    if provider.generative and nothing_supported(outcome.support):
        outcome.answer = await quoted_answer(
            case.question, case.history, retrieval.hits, outcome.vector, FALLBACK_PREFIX
        )
        outcome.prompt_hits = retrieval.hits


async def _warm_up(provider: LLMProvider) -> None:
    """One short generation first, so the first question's time to first token is not a model load."""
    stream = provider.stream([{"role": "user", "content": "Say OK."}], Generation())
    try:
        async for _ in stream:
            break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def summarise(outcomes: list[Outcome], k: int) -> dict:
    """The set's figures (``None`` where the set has no question of that kind)."""
    answerable = [o for o in outcomes if o.case.answerable]
    unanswerable = [o for o in outcomes if not o.case.answerable]
    seconds = [o.seconds for o in outcomes]
    figures = {
        "questions": len(outcomes),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "k": k,
        f"hit@{k}": _share([o.rank is not None for o in answerable]),
        "mrr": round(sum(1 / o.rank for o in answerable if o.rank) / len(answerable), 3) if answerable else None,
        "key_recall": _share([o.keys_found for o in answerable if o.case.keys]),
        "not_found_accuracy": _share([o.not_found for o in unanswerable]),
        # Unanswerable questions not answered as if the documents held the answer (not found, or
        # the closest passages with "I am not sure").
        "not_answered_as_known": _share([o.not_found or o.unsure for o in unanswerable]),
        "false_not_found": _share([o.not_found for o in answerable]),
        "answerable_unsure": _share([o.unsure for o in answerable]),
        "p50_ms": round(percentile(seconds, 0.5) * 1000, 1),
        "p95_ms": round(percentile(seconds, 0.95) * 1000, 1),
    }
    if any(o.answer for o in outcomes):
        figures.update(_answer_figures(answerable, unanswerable))
    return figures


def _answer_figures(answerable: list[Outcome], unanswerable: list[Outcome]) -> dict:
    answered = [o for o in answerable if not o.not_found]
    first_texts = [o.first_token for o in answerable + unanswerable if o.first_token is not None]
    return {
        # The expected facts in the answer's own text (what the reader reads), over answerable questions.
        "answer_key_recall": _share([answer_has_keys(o) for o in answerable if o.case.keys]),
        # Answers with a number, name, quote or link that no passage they cite holds.
        "answers_with_unsupported_claims": sum(o.support.get("unsupported", 0) > 0 for o in answerable + unanswerable),
        "unsupported_sentences": sum(o.support.get("unsupported", 0) for o in answerable + unanswerable),
        # Answers whose model text was replaced by the extractive answer (nothing of it held up).
        "answers_replaced": sum(o.answer.startswith(FALLBACK_PREFIX) for o in answerable + unanswerable),
        "answers_citing": _share([bool(o.cited) for o in answered]),
        "answers_citing_source": _share([_cites_source(o) for o in answered]),
        "invalid_citations": sum(len([n for n in o.cited if not 1 <= n <= len(o.prompt_hits)]) for o in answered),
        "answers_repeating": sum(repeats(o.answer) for o in answered),
        # The model saying the sources do not answer, yet citing them: a claim of support it denies.
        "declining": sum(declines(o.answer) for o in answered),
        "declining_with_citations": sum(declines(o.answer) and bool(o.cited) for o in answered),
        # Unanswerable questions the gate let through that the model itself declined.
        "unanswerable_declined": f"{sum(declines(o.answer) for o in unanswerable if not o.not_found)}"
        f" of {sum(not o.not_found for o in unanswerable)}",
        "first_text_p50_s": round(percentile(first_texts, 0.5), 3),
        "first_text_p95_s": round(percentile(first_texts, 0.95), 3),
    }


def answer_has_keys(outcome: Outcome) -> bool:
    """Every expected fact of the case occurs in the answer's text (Markdown code marks ignored)."""
    text = normal(outcome.answer)
    return all(normal(key) in text for key in outcome.case.keys)


def _cites_source(outcome: Outcome) -> bool:
    """Whether a citation of the answer points at a passage of the document that answers."""
    hits = outcome.prompt_hits
    return any(1 <= n <= len(hits) and hits[n - 1].document_id == outcome.source_document for n in outcome.cited)


_DECLINE = re.compile(
    r"\b(not (in|mentioned in|covered by|found in|contained in) (the|these|your) (documents|sources)"
    r"|(do|does) not (contain|mention|say)|no information|(cannot|can't|could not|couldn't) find)\b",
    re.IGNORECASE,
)


def declines(text: str) -> bool:
    """Whether the answer says the sources do not answer the question."""
    return bool(_DECLINE.search(text))


_SENTENCE = re.compile(r"[^.!?\n]{20,}[.!?\n]")


def repeats(text: str) -> bool:
    """Whether the answer says one sentence three times or more (a small model's loop)."""
    sentences = [_normal(s) for s in _SENTENCE.findall(text)]
    return any(sentences.count(s) >= 3 for s in set(sentences))
