"""Prompt assembly: system instructions, a bounded memory window, numbered sources, question."""

from __future__ import annotations

from dataclasses import dataclass

from documents.search import Hit

from .llm.base import ChatMessage

SYSTEM_PROMPT = (
    "You answer questions about the user's documents. Use only the numbered sources given with "
    "the question. Cite every claim with the source number in square brackets, like [1] or [2]. "
    "If the sources do not contain the answer, say that it is not in the documents. Be concise."
)
NOT_FOUND_ANSWER = (
    "I could not find anything about this in your documents, so I won't guess. "
    "Try rephrasing the question, or check that the relevant document has been uploaded."
)
CHARS_PER_TOKEN = 4  # rough size of an English token; only used to bound the memory window


@dataclass(frozen=True)
class Turn:
    role: str
    text: str


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def memory_window(turns: list[Turn], budget_tokens: int) -> list[Turn]:
    """The most recent turns (oldest first) whose total size fits ``budget_tokens``."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        used += estimate_tokens(turn.text)
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


def _page(hit: Hit) -> str:
    return f"page {hit.page}" if hit.page else ""


DEGRADED_PREFIX = (
    "**The language model is unavailable right now**, so here are the most relevant passages "
    "from your documents instead:"
)


def extractive_answer(hits: list[Hit], limit: int = 3) -> str:
    """A degraded answer: the best passages themselves, cited, with no generated text."""
    quotes = [f"> {' '.join(hit.text.split())[:600]} [{n}]" for n, hit in enumerate(hits[:limit], start=1)]
    return "\n\n".join([DEGRADED_PREFIX, *quotes])


def build_messages(question: str, history: list[Turn], hits: list[Hit]) -> list[ChatMessage]:
    messages: list[ChatMessage] = [{"role": "system", "content": SYSTEM_PROMPT}]
    messages += [{"role": turn.role, "content": turn.text} for turn in history]
    messages.append(
        {
            "role": "user",
            "content": f"Sources:\n\n{format_sources(hits)}\n\nQuestion: {question}",
        }
    )
    return messages
