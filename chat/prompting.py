"""Prompt assembly: system instructions, a bounded memory window, numbered sources, question."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from django.conf import settings

from documents.search import Hit, snippet

from .llm.base import ChatMessage, LLMProvider, LLMRequestRejected, PromptCounter

SYSTEM_PROMPT = (
    "You answer questions about the user's documents. Use only the numbered sources given with "
    "the question. Cite every claim with the source number in square brackets, like [1] or [2]. "
    "If the sources do not contain the answer, say that it is not in the documents. Be concise."
)
# For a small local model: short, concrete, one thing to do, and said again at the end of the
# question (a 135M model follows the last words best; measured: bench/RESULTS.md, "Issue 13").
BRIEF_SYSTEM_PROMPT = (
    "You answer questions using the numbered sources. Always end each sentence with the number of "
    "the source it comes from, like [1]."
)
NOT_FOUND_ANSWER = (
    "I could not find anything about this in your documents, so I won't guess. "
    "Try rephrasing the question, or check that the relevant document has been uploaded."
)
# Rough size of an English token: only bounds how much memory is loaded from the database; the
# prompt itself is measured with the model's tokenizer (``prompt_for``).
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Turn:
    role: str
    text: str


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def memory_window(
    turns: list[Turn], budget_tokens: int, size: Callable[[Turn], int] = lambda turn: estimate_tokens(turn.text)
) -> list[Turn]:
    """The most recent turns (oldest first) whose total ``size`` fits ``budget_tokens`` (by default
    estimated from characters: what to load from the database; ``prompt_for`` measures again with
    the model's tokenizer)."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        used += size(turn)
        if used > budget_tokens:
            break
        kept.insert(0, turn)
    return kept


def retrieval_query(question: str, history: list[Turn]) -> str:
    """What to search for: the question, plus the previous question so follow-ups keep context."""
    previous = [turn.text for turn in history if turn.role == "user"][-1:]
    return "\n".join([*previous, question])


def format_sources(hits: list[Hit]) -> str:
    blocks = []
    for n, hit in enumerate(hits, start=1):
        where = ", ".join(part for part in (hit.title, _page(hit), hit.section) if part)
        blocks.append(f"[{n}] ({where})\n{hit.text}")
    return "\n\n".join(blocks)


def brief_sources(hits: list[Hit], question: str, passage_chars: int) -> str:
    """Numbered passages, each cut to its part nearest the question, without titles."""
    return "\n\n".join(f"[{n}] {focus(hit.text, question, passage_chars)}" for n, hit in enumerate(hits, start=1))


_SENTENCES = re.compile(r"(?<=[.!?:])\s+|\n+")
_WORD = re.compile(r"[a-z0-9_]{3,}")


def focus(text: str, question: str, chars: int) -> str:
    """The run of consecutive sentences of ``text``, at most ``chars`` long, that shares the most
    words with ``question`` (a small model reads a short passage faster and quotes it better)."""
    text = text.strip()
    if len(text) <= chars:
        return text
    wanted = set(_WORD.findall(question.lower()))
    sentences = [s for s in _SENTENCES.split(text) if s.strip()]
    best, best_score = "", -1
    for start in range(len(sentences)):
        window: list[str] = []
        for sentence in sentences[start:]:
            if window and len(" ".join([*window, sentence])) > chars:
                break
            window.append(sentence)
        candidate = " ".join(window)[:chars]
        score = len(wanted & set(_WORD.findall(candidate.lower())))
        if score > best_score:
            best, best_score = candidate, score
    return best


def _page(hit: Hit) -> str:
    return f"page {hit.page}" if hit.page else ""


# The lead line of an answer made of the passages' own sentences when it is not the chosen mode.
DEGRADED_PREFIX = (
    "**The language model is unavailable right now**, so here are the sentences of your documents that answer best:\n\n"
)
UNSURE_PREFIX = (
    "**I am not sure your documents answer this.** These are the closest passages; "
    "check that they are about what you asked:\n\n"
)
FALLBACK_PREFIX = (
    "**The model's answer stated things its sources do not say**, so here are the sentences of your "
    "documents that answer best instead:\n\n"
)
NOTHING_NEW_ANSWER = (
    "Your documents say nothing more about this than what I quoted above. Try asking about another part of it."
)


def build_messages(question: str, history: list[Turn], hits: list[Hit]) -> list[ChatMessage]:
    return _conversation(SYSTEM_PROMPT, history, f"Sources:\n\n{format_sources(hits)}\n\nQuestion: {question}")


def build_brief_messages(question: str, history: list[Turn], hits: list[Hit], passage_chars: int) -> list[ChatMessage]:
    """For a small local model: short passages, and the instruction repeated after the question."""
    numbers = " or ".join(f"[{n}]" for n in range(1, len(hits) + 1))
    content = (
        f"{brief_sources(hits, question, passage_chars)}\n\nQuestion: {question}\n"
        f"Answer in one or two sentences, each ending with {numbers}."
    )
    return _conversation(BRIEF_SYSTEM_PROMPT, history, content)


def _conversation(instructions: str, history: list[Turn], question: str) -> list[ChatMessage]:
    """The instructions, the memory window's turns, then the question with its sources."""
    messages: list[ChatMessage] = [{"role": "system", "content": instructions}]
    messages += [{"role": turn.role, "content": turn.text} for turn in history]
    messages.append({"role": "user", "content": question})
    return messages


PROMPT_MARGIN_TOKENS = 16  # slack under the context for tokens a chat template adds at the end
MIN_PASSAGE_CHARS = 200  # a passage cut shorter than this no longer supports an answer


def prompt_for(
    provider: LLMProvider, question: str, history: list[Turn], hits: list[Hit], count: PromptCounter
) -> tuple[list[ChatMessage], list[Hit]]:
    """The messages ``provider`` gets for ``question``, and the passages they hold (numbered from 1
    in this order): fewer, shorter ones and brief instructions for a small local model.

    Measured with ``count`` (the model's tokenizer, or a bound never below it), the prompt plus the
    answer's ``max_tokens`` fits the model's context: the oldest turns of the memory go first,
    then the last passages, then the one passage left is cut to its part nearest the question.
    Raises ``LLMRequestRejected`` if even the question alone does not fit."""
    budget = provider.context_tokens - provider.answer_tokens - PROMPT_MARGIN_TOKENS
    given = hits[: provider.max_prompt_sources or len(hits)]
    turns = memory_window(
        history, settings.MEMORY_WINDOW_TOKENS, lambda turn: count([{"role": turn.role, "content": turn.text}])
    )
    chars = provider.passage_chars if provider.brief_instructions else None
    while True:
        messages = _build(provider, question, turns, given, chars)
        needed = count(messages)
        if needed <= budget:
            return messages, given
        if turns:
            turns = turns[1:]
        elif len(given) > 1:
            given = given[:-1]
        elif given and len(given[0].text) // 2 >= MIN_PASSAGE_CHARS:
            cut = focus(given[0].text, question, len(given[0].text) // 2)
            given = [replace(given[0], text=cut)]
            chars = min(chars, len(cut)) if chars else None
        else:
            raise LLMRequestRejected(f"the prompt needs {needed} tokens; the model takes {budget}")


def _build(
    provider: LLMProvider, question: str, turns: list[Turn], given: list[Hit], chars: int | None
) -> list[ChatMessage]:
    if provider.brief_instructions:
        return build_brief_messages(question, turns, given, chars or 300)
    return build_messages(question, turns, given)


_CITATION = re.compile(r"\[(\d{1,2})\]")


def cited_numbers(text: str) -> list[int]:
    """The source numbers an answer cites ([n]), in order, once each (the chat page's rule too)."""
    return list(dict.fromkeys(int(n) for n in _CITATION.findall(text)))


SUPPORT_PREFIX = "\n\n**The model cited no source.** The passages it was given, best first:"


def support_block(hits: list[Hit], limit: int = 2) -> str:
    """Shown under an answer that cites nothing: the passages it rests on, quoted and numbered."""
    quotes = [f"> {snippet(hit.text)} [{n}]" for n, hit in enumerate(hits[:limit], start=1)]
    return "\n\n".join([SUPPORT_PREFIX, *quotes])
