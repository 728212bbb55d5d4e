"""The extractive answer: the sentences of the retrieved passages that answer the question, kept
verbatim, in reading order, with their citations. No model writes anything, so nothing is stated
that the passages do not say.

Each passage is cut into units (sentences; a list item, a table row or a code block is one unit),
and each unit is scored by how close its embedding is to the question's (the MiniLM model already
loaded for retrieval) and by how many of the question's rarer words it holds. The best unit and
those nearly as good (up to ``MAX_UNITS`` and ``MAX_CHARS``) form the answer, grouped by passage,
each passage's units in the order the document has them. A unit that introduces a list (ends with
a colon) brings the items that follow it.

This is the default answer mode offline (``LLM_PROVIDER=extractive``), the degraded answer when a
model is down, and the answer to a question the documents only loosely match (said so).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from documents.embedding import encode, executor
from documents.relevance import stem, zipf_frequency
from documents.search import Hit

from .prompting import Turn

MAX_UNITS = 6
MAX_CHARS = 1200
KEEP_FRACTION = 0.65  # a unit joins the answer when its score is at least this share of the best's
LEXICAL_WEIGHT = 0.25  # the question's words in a unit, against its embedding's similarity
RANK_BONUS = 0.03  # the search's own order breaks near-ties
FOLLOW_UP_WORDS = 3  # a question with this few topic words continues the previous one


@dataclass(frozen=True)
class Unit:
    n: int  # the passage's source number
    order: int  # its place in the passage
    text: str  # verbatim, as Markdown
    kind: str  # "sentence" | "item" | "row" | "code"


# --- cutting passages into units -------------------------------------------------------------------
_FENCE = re.compile(r"(```|~~~)[^\n]*\n.*?\n\1", re.S)
_HEADING = re.compile(r"^\s*#{1,6}\s")
_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_ROW = re.compile(r"^\s*\|.*\|\s*$")
_RULE = re.compile(r"^\s*\|?\s*:?-{3,}")
# A sentence ends at . ! ? before white space and a capital, a digit, a quote or a code mark.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"”')\]]*\s+(?=[\"“(\[`*_]*[A-Z0-9`])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "no.")


def units_of(text: str, n: int) -> list[Unit]:
    """``text`` (a passage, Markdown) as units in reading order; headings are left out."""
    units: list[Unit] = []
    position = 0
    for fence in _FENCE.finditer(text):
        units += _prose_units(text[position : fence.start()], n, len(units))
        units.append(Unit(n, len(units), fence.group(0), "code"))
        position = fence.end()
    return units + _prose_units(text[position:], n, len(units))


def _prose_units(text: str, n: int, first: int) -> list[Unit]:
    units: list[Unit] = []
    paragraph: list[str] = []

    def flush() -> None:
        for sentence in split_prose(" ".join(paragraph)):
            units.append(Unit(n, first + len(units), sentence, "sentence"))
        paragraph.clear()

    for line in text.splitlines():
        if not line.strip() or _HEADING.match(line) or _RULE.match(line):
            flush()
        elif _ITEM.match(line):
            flush()
            units.append(Unit(n, first + len(units), line.strip(), "item"))
        elif _ROW.match(line):
            flush()
            units.append(Unit(n, first + len(units), line.strip(), "row"))
        elif units and units[-1].kind == "item" and not paragraph and line.startswith((" ", "\t")):
            last = units.pop()  # an item's continuation line
            units.append(Unit(n, last.order, f"{last.text} {line.strip()}", "item"))
        else:
            paragraph.append(line.strip())
    flush()
    return units


def split_prose(text: str) -> list[str]:
    """Sentences of a paragraph, not cut after an abbreviation ("e.g.")."""
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text.strip()):
        if sentences and sentences[-1].lower().endswith(_ABBREVIATIONS):
            sentences[-1] = f"{sentences[-1]} {piece}"
        elif piece.strip():
            sentences.append(piece.strip())
    return sentences


# --- scoring ---------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9_]+")
_QUESTION_WORDS = frozenset(
    "what which who whom whose when where why how does do did is are was were can could".split()
)


def topic_weights(question: str) -> dict[str, float]:
    """The question's topic words (stems) weighted by rarity in English: "pool" weighs more than
    "use"; question words and very common words weigh nothing."""
    weights: dict[str, float] = {}
    for word in _WORD.findall(question.lower()):
        if word in _QUESTION_WORDS or len(word) < 2:
            continue
        weight = max(0.0, 6.5 - zipf_frequency(word))
        if weight > 0:
            weights[stem(word)] = max(weights.get(stem(word), 0.0), weight)
    return weights


def lexical_score(unit: str, weights: dict[str, float]) -> float:
    """The weighted share of the question's topic words the unit holds (0..1)."""
    if not weights:
        return 0.0
    present = {stem(word) for word in _WORD.findall(unit.lower())}
    return sum(weight for term, weight in weights.items() if term in present) / sum(weights.values())


def is_follow_up(question: str) -> bool:
    """ "why?", "tell me more", "and the default?": too few topic words to stand alone."""
    return len(topic_weights(question)) <= FOLLOW_UP_WORDS and len(question.split()) <= 6


# --- composing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scored:
    unit: Unit
    score: float


async def compose(question: str, history: Sequence[Turn], hits: Sequence[Hit], question_vector: Sequence[float]) -> str:
    """The extractive answer to ``question`` from ``hits`` (numbered from 1), or '' if no unit of
    them is new to the conversation."""
    said = _said_before(history)
    units = [unit for n, hit in enumerate(hits, start=1) for unit in units_of(hit.text, n)]
    units = [unit for unit in units if _normal(unit.text) not in said]
    if not units:
        return ""
    vectors = await _unit_vectors(hits, units)
    weights = topic_weights(_wording(question, history))
    scored = [
        Scored(unit, _cosine(vector, question_vector) + LEXICAL_WEIGHT * lexical_score(unit.text, weights)
               + RANK_BONUS * (len(hits) - unit.n) / max(1, len(hits)))
        for unit, vector in zip(units, vectors)
    ]  # fmt: skip
    return render(choose(scored, units))


async def closest_sentence(hits: Sequence[Hit], question_vector: Sequence[float]) -> float:
    """The highest similarity of one unit of the passages to the question: a finer sign than a
    whole passage's that they answer it (the "unsure" band is answered when one sentence is close)."""
    units = [unit for n, hit in enumerate(hits, start=1) for unit in units_of(hit.text, n)]
    if not units:
        return 0.0
    return max(_cosine(vector, question_vector) for vector in await _unit_vectors(hits, units))


def _wording(question: str, history: Sequence[Turn]) -> str:
    """The words that say what is wanted: a follow-up's own, plus the previous question's."""
    if not is_follow_up(question):
        return question
    previous = [turn.text for turn in history if turn.role == "user"][-1:]
    return " ".join([*previous, question])


def _said_before(history: Sequence[Turn]) -> str:
    return " ".join(_normal(turn.text) for turn in history if turn.role == "assistant")


def choose(scored: list[Scored], units: list[Unit]) -> list[Unit]:
    """The best unit with the sentences around it, those nearly as good, and the items a chosen
    "…:" introduces."""
    ranked = sorted(scored, key=lambda s: -s.score)
    best = ranked[0].score
    chosen: list[Unit] = []
    size = 0
    for candidate in ranked:
        if len(chosen) >= MAX_UNITS or (chosen and candidate.score < KEEP_FRACTION * best):
            break
        group = [candidate.unit, *_introduced(candidate.unit, units)]
        if not chosen:  # the best one is read with what the document says around it
            group += _neighbours(candidate.unit, units)
        # Overlapping chunks repeat sentences: a unit already said (or inside one said) is left out.
        said = " ".join(_normal(unit.text) for unit in chosen)
        group = [unit for unit in group if unit not in chosen and _normal(unit.text) not in said]
        if not group:
            continue
        extra = sum(len(unit.text) for unit in group)
        if chosen and size + extra > MAX_CHARS:
            continue
        chosen += group
        size += extra
    return chosen


def _neighbours(unit: Unit, units: list[Unit]) -> list[Unit]:
    """The sentences just before and after ``unit`` in its passage (a sentence often needs the one
    before it, "There is no .env loader" needs "configured only through environment variables")."""
    if unit.kind != "sentence":
        return []
    return [u for u in units if u.n == unit.n and u.kind == "sentence" and abs(u.order - unit.order) == 1]


def _introduced(unit: Unit, units: list[Unit]) -> list[Unit]:
    """The list items (or code block) right after a unit that ends with a colon."""
    if not unit.text.rstrip("*_").endswith(":"):
        return []
    following = [u for u in units if u.n == unit.n and u.order > unit.order]
    items: list[Unit] = []
    for u in sorted(following, key=lambda u: u.order):
        if u.kind == "sentence" or len(items) >= 6:
            break
        items.append(u)
    return items


def render(chosen: list[Unit]) -> str:
    """One paragraph per passage, in the order of each passage's best unit; its units in reading
    order, cited once at the end of the paragraph (the grounding check reads the citation as the
    source of each sentence before it)."""
    passages: OrderedDict[int, list[Unit]] = OrderedDict()
    for unit in chosen:
        passages.setdefault(unit.n, []).append(unit)
    paragraphs = []
    for n, group in passages.items():
        group.sort(key=lambda u: u.order)
        paragraphs.append(_paragraph(group, n))
    return "\n\n".join(paragraphs)


def _paragraph(units: list[Unit], n: int) -> str:
    lines: list[str] = []
    prose: list[str] = []
    for unit in units:
        if unit.kind == "sentence":
            prose.append(unit.text)
            continue
        if prose:
            lines.append(" ".join(prose))
            prose = []
        lines.append(unit.text)
    if prose:
        lines.append(" ".join(prose))
    cite = f" [{n}]"
    if units[-1].kind == "code":
        return "\n\n".join(lines) + f"\n\n{cite.strip()}"
    return "\n".join(lines) + cite if units[-1].kind in ("item", "row") else "\n\n".join(lines) + cite


# --- vectors ---------------------------------------------------------------------------------------
_unit_cache: OrderedDict[tuple[int, int, str], list[float]] = OrderedDict()
UNIT_CACHE_SIZE = 20_000


async def _unit_vectors(hits: Sequence[Hit], units: list[Unit]) -> list[list[float]]:
    """Each unit's embedding: cached by chunk, encoded off the event loop in one call otherwise."""
    keys = [(hits[unit.n - 1].chunk_id, unit.order, unit.text) for unit in units]
    missing = [key for key in dict.fromkeys(keys) if key not in _unit_cache]
    if missing:
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(executor(), encode, [_plain(key[2]) for key in missing])
        for key, vector in zip(missing, vectors):
            _unit_cache[key] = vector
        while len(_unit_cache) > UNIT_CACHE_SIZE:
            _unit_cache.popitem(last=False)
    return [_unit_cache[key] for key in keys]


def _plain(text: str) -> str:
    return re.sub(r"[`*_|#>]", " ", text)


def _normal(text: str) -> str:
    return " ".join(re.sub(r"\[\d{1,2}\]", " ", text).lower().split())


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Both are normalised embeddings: their dot product."""
    return math.fsum(x * y for x, y in zip(a, b))
