"""Structure-aware chunking: sections and paragraphs are kept whole where they fit, chunks are
sized in model tokens, and consecutive chunks of a section overlap so no sentence loses context."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .extract import Section

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class ChunkDraft:
    text: str
    section: str
    page: int | None
    token_count: int


def chunk_sections(
    sections: list[Section],
    *,
    max_tokens: int,
    overlap_tokens: int,
    count_tokens: Callable[[str], int],
) -> list[ChunkDraft]:
    drafts: list[ChunkDraft] = []
    for section in sections:
        pieces = _pieces(section.text, max_tokens, count_tokens)
        for text in _pack(pieces, max_tokens, overlap_tokens, count_tokens):
            drafts.append(ChunkDraft(text, section.heading, section.page, count_tokens(text)))
    return drafts


def _pieces(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Paragraphs, with any paragraph longer than a chunk split into sentences, then words."""
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if count_tokens(paragraph) <= max_tokens:
            pieces.append(paragraph)
            continue
        for sentence in _SENTENCE_END.split(paragraph):
            if count_tokens(sentence) <= max_tokens:
                pieces.append(sentence)
            else:
                pieces.extend(_split_words(sentence, max_tokens, count_tokens))
    return pieces


def _split_words(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    # Word-piece counts add up over words joined by spaces, so packing words counts each once.
    return _pack(text.split(), max_tokens, 0, count_tokens, joiner=" ")


def _pack(
    pieces: list[str],
    max_tokens: int,
    overlap_tokens: int,
    count_tokens: Callable[[str], int],
    joiner: str = "\n\n",
) -> list[str]:
    """Consecutive ``pieces`` joined into chunks of at most ``max_tokens``, each starting with up to
    ``overlap_tokens`` of the previous one's last sentences."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        piece_tokens = count_tokens(piece)
        if current and size + piece_tokens > max_tokens:
            chunks.append(joiner.join(current))
            current = _overlap_tail(current, overlap_tokens, max_tokens - piece_tokens, count_tokens)
            size = sum(count_tokens(p) for p in current)
        current.append(piece)
        size += piece_tokens
    if current:
        chunks.append(joiner.join(current))
    return chunks


def _overlap_tail(
    pieces: list[str],
    overlap_tokens: int,
    room: int,
    count_tokens: Callable[[str], int],
) -> list[str]:
    """The last sentences of the previous chunk, up to ``overlap_tokens``, that still leave room."""
    budget = min(overlap_tokens, room)
    if budget <= 0:
        return []
    sentences = _SENTENCE_END.split(pieces[-1])
    tail: list[str] = []
    used = 0
    for sentence in reversed(sentences):
        tokens = count_tokens(sentence)
        if used + tokens > budget:
            break
        tail.insert(0, sentence)
        used += tokens
    return [" ".join(tail)] if tail else []
