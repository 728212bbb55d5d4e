"""The grounding check: does each sentence of an answer say only what its sources say?

A model's prose cannot be verified word by word, but the facts a reader acts on can: numbers,
code-like names (``DB_POOL_TIMEOUT``, ``task_done()``, ``chat/janitor.py``), quoted phrases, named
entities (``Kubernetes``, ``Mount Everest``) and links. Each of these in a sentence must occur in
the passages the sentence cites, or in the question. A sentence cites the sources in its own
brackets ([2]); one without brackets takes those of the next cited sentence of its paragraph (the
common "A. B [1]." style), else of the previous one, else every passage the model was given.

Every answer mode goes through it (an extractive answer passes by construction): sentences that
fail are marked for the reader and counted, and the links an answer may render are only those
found in its sources.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, TypedDict

from documents.relevance import stem, zipf_frequency

SUPPORTED, UNSUPPORTED, UNCHECKED = "supported", "unsupported", "unchecked"
Status = Literal["supported", "unsupported", "unchecked"]
ClaimKind = Literal["number", "name", "quote", "entity", "link"]


class SentenceSupport(TypedDict):
    text: str
    sources: list[int]
    status: str
    missing: list[str]


class Support(TypedDict, total=False):
    """What the ``finish`` frame and the conversation API carry (``Message.support``)."""

    sentences: list[SentenceSupport]
    supported: int
    unsupported: int
    links: list[str]  # links found in the sources: the only ones the answer renders as links
    fallback: str  # why the answer shown is not the model's (nothing of it was supported)


@dataclass(frozen=True)
class Claim:
    kind: ClaimKind
    text: str


@dataclass
class Sentence:
    text: str
    start: int  # character span in the answer text
    end: int
    paragraph: int
    cited: list[int] = field(default_factory=list)


# --- splitting an answer --------------------------------------------------------------------------
_CITATION = re.compile(r"\[(\d{1,2})\]")
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
# A sentence ends at . ! ? (after any closing quote, bracket or citations) before white space and
# what can start a sentence; "e.g. foo" and "3.5" do not end one.
_END = re.compile(r"(?<=[.!?])(?:[\"”’)\]*_`]*)(?:\s*\[\d{1,2}\])*(?=\s+[\"“(\[*_`]*[A-Z0-9])")


def split_sentences(text: str) -> list[Sentence]:
    """The answer's sentences with their spans: paragraphs and list items split at line breaks
    (a fenced code block stays one piece), then at sentence ends."""
    sentences: list[Sentence] = []
    paragraph = 0
    for start, end, is_code in _blocks(text):
        block = text[start:end]
        if not block.strip():
            paragraph += 1
            continue
        pieces = [(0, len(block))] if is_code else _sentence_spans(block)
        for a, b in pieces:
            piece = block[a:b]
            if piece.strip() and not _CITATION.sub("", piece).strip(" .\t"):  # only "[1]."
                if sentences and sentences[-1].paragraph == paragraph:
                    sentences[-1].end = start + b
                    sentences[-1].text = text[sentences[-1].start : sentences[-1].end].strip()
                continue
            if piece.strip():
                lead = len(piece) - len(piece.lstrip())
                sentences.append(Sentence(piece.strip(), start + a + lead, start + b, paragraph))
        if is_code:
            paragraph += 1
    for sentence in sentences:
        sentence.cited = [
            int(n) for n in dict.fromkeys(_CITATION.findall(_QUOTED.sub(" ", _BACKTICKED.sub(" ", sentence.text))))
        ]
    return sentences


def _blocks(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, is_code) of each line, a fenced code block being one block; blank lines are
    blocks of their own (they separate paragraphs)."""
    blocks: list[tuple[int, int, bool]] = []
    position = 0
    for fence in _FENCE.finditer(text):
        blocks += _lines(text, position, fence.start())
        blocks.append((fence.start(), fence.end(), True))
        position = fence.end()
    return blocks + _lines(text, position, len(text))


def _lines(text: str, start: int, end: int) -> list[tuple[int, int, bool]]:
    spans, position = [], start
    for line in text[start:end].split("\n"):
        spans.append((position, position + len(line), False))
        position += len(line) + 1
    return spans


def _sentence_spans(block: str) -> list[tuple[int, int]]:
    spans, position = [], 0
    for match in _END.finditer(block):
        spans.append((position, match.end()))
        position = match.end()
    spans.append((position, len(block)))
    return spans


def sources_of(sentences: list[Sentence], all_sources: list[int]) -> list[list[int]]:
    """The sources each sentence is checked against (see the module's docstring)."""
    chosen = []
    for sentence in sentences:
        if sentence.cited:
            chosen.append(sentence.cited)
            continue
        same = [s for s in sentences if s.paragraph == sentence.paragraph and s.cited]
        after = [s for s in same if s.start > sentence.start]
        before = [s for s in same if s.start < sentence.start]
        chosen.append(after[0].cited if after else before[-1].cited if before else all_sources)
    return chosen


# --- claims ---------------------------------------------------------------------------------------
_URL = re.compile(r"\bhttps?://[^\s<>()\[\]`\"']+|\bwww\.[\w-]+(?:\.[\w-]+)+[^\s<>()\[\]`\"']*", re.I)
_QUOTED = re.compile(r"\"([^\"\n]{3,200})\"|“([^”\n]{3,200})”|«([^»\n]{3,200})»")
_BACKTICKED = re.compile(r"`([^`\n]{1,200})`")
_NUMBER = re.compile(r"(?<![\w.,/-])\d+(?:[.,]\d+)*(?:\.\d+)?(?![\w])")
_CODE_NAME = re.compile(
    r"(?<![\w/.-])(?:"
    r"--?[a-z][\w-]+"  # a command-line flag
    r"|/?[\w.-]+(?:/[\w.-]+)+/?"  # a path: chat/janitor.py, /ws/chat/
    r"|[A-Za-z_][\w]*\(\)"  # a call: task_done()
    r"|[A-Za-z_]\w*_\w+"  # snake or SCREAMING case: DB_POOL_TIMEOUT
    r"|[A-Za-z_]\w+(?:\.[A-Za-z_]\w*)+"  # a dotted name: manage.py, re.fullmatch (not "e.g.")
    r"|[a-z]+[A-Z]\w*|[A-Z][a-z]+[A-Z]\w*"  # camelCase, CamelCase inside: QueryBatcher
    r"|[A-Z][A-Z0-9]{2,}"  # an acronym: HNSW
    r")(?![\w/])"
)
_CAPITALISED = re.compile(r"\b[A-Z][a-zA-Z]+(?:[ -][A-Z][a-zA-Z]+)*")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
# An everyday word (Zipf frequency at least this) written with a capital is no name ("Use", "Each").
EVERYDAY_ZIPF = 4.0


def claims_in(sentence: str) -> list[Claim]:
    """The checkable facts of one sentence, each once."""
    claims: list[Claim] = []
    # Code first, whole (it may hold quotes and brackets), then quotes, whole (a passage may quote
    # "[1] or [2]" itself), then the rest without citations.
    for code in _BACKTICKED.findall(sentence):
        if len(code.strip()) > 1:
            claims.append(Claim("name", code.strip()))
    rest = _BACKTICKED.sub(" ", sentence)
    for groups in _QUOTED.findall(_URL.sub(" ", rest)):
        claims.append(Claim("quote", next(g for g in groups if g)))
    text = _LIST_MARK.sub("", _CITATION.sub(" ", _QUOTED.sub(" ", rest)))
    for url in _URL.findall(text):
        claims.append(Claim("link", url.rstrip(".,;:!?")))
    text = _URL.sub(" ", text)
    for name in _CODE_NAME.findall(text):
        claims.append(Claim("name", name.rstrip(".")))
    for number in _NUMBER.findall(_CODE_NAME.sub(" ", text)):
        claims.append(Claim("number", number.rstrip(".,")))
    claims += [Claim("entity", name) for name in _entities(text)]
    return list(dict.fromkeys(claims))


def _entities(text: str) -> list[str]:
    """Capitalised words and runs of them that are names: not an everyday word capitalised at the
    start of a sentence or a heading, and not an acronym or code name (claimed as names)."""
    found = []
    plain = _CODE_NAME.sub(" ", re.sub(r"[*_>#]", " ", text))
    for match in _CAPITALISED.finditer(plain):
        words = match.group(0).split()
        at_start = not plain[: match.start()].strip(" \"“(«'")
        while words and _everyday(words[0]) and (at_start or len(words) == 1):
            words, at_start = words[1:], False
        if words:
            found.append(" ".join(words))
    return found


@lru_cache(maxsize=8192)
def _everyday(word: str) -> bool:
    return word.lower() in {"i", "a"} or zipf_frequency(word.lower()) >= EVERYDAY_ZIPF


# --- matching -------------------------------------------------------------------------------------
_QUOTES = str.maketrans(
    {"“": '"', "”": '"', "«": '"', "»": '"', "’": "'", "‘": "'", "–": "-", "—": "-", "…": "...", "\u00a0": " "}
)


def normal(text: str) -> str:
    """Lower case, Markdown emphasis and code marks removed, quotes and dashes unified, white space
    folded: how a claim and a passage are compared."""
    text = text.translate(_QUOTES).replace("`", "").replace("**", "").replace("\\", "")
    return " ".join(text.lower().split())


def found_in(claim: Claim, haystack: str) -> bool:
    """Whether ``claim`` occurs in ``haystack`` (already ``normal``), as a whole token."""
    needle = normal(claim.text)
    variants = {needle}
    if claim.kind == "number":
        variants.add(needle.replace(",", ""))
        if needle.isdigit() and len(needle) > 3:
            variants.add(f"{int(needle):,}")  # 1200 where the passage writes 1,200
        variants |= {f"{needle[: -len(suffix)]}" for suffix in (".0",) if needle.endswith(suffix)}
    elif claim.kind == "name":
        variants |= {needle.removesuffix("()"), needle.strip("/")}
    elif claim.kind == "entity":
        variants |= {needle.removesuffix("'s"), needle.removesuffix("s"), needle.removesuffix("es")}
    elif claim.kind == "link":
        variants |= {needle.rstrip("/"), needle.split("://", 1)[-1].rstrip("/")}
    if any(_occurs(variant, haystack, claim.kind) for variant in variants if variant):
        return True
    # A capitalised word at a sentence's start may be a plain word in another form ("Pooling" where
    # the passage says "pooled"): its stem opening a word of the passage will do.
    root = stem(needle)
    return (
        claim.kind == "entity"
        and " " not in needle
        and len(root) >= 4
        and re.search(r"(?<!\w)" + re.escape(root), haystack) is not None
    )


def _occurs(needle: str, haystack: str, kind: ClaimKind) -> bool:
    if kind in ("quote", "link"):
        return needle in haystack
    left = r"(?<![\d.,])" if kind == "number" else r"(?<![\w])"
    right = r"(?![\d])" if kind == "number" else r"(?![a-z0-9])" if kind == "entity" else r"(?![\w])"
    return re.search(left + re.escape(needle) + right, haystack) is not None


# --- the check ------------------------------------------------------------------------------------
def check_answer(text: str, passages: Mapping[int, str], question: str) -> Support:
    """Check every sentence of ``text`` against the passages it cites (numbered as in the answer's
    sources) and the question; passages a sentence cites that do not exist hold nothing."""
    sentences = split_sentences(text)
    chosen = sources_of(sentences, sorted(passages))
    normal_passages = {n: normal(passage) for n, passage in passages.items()}
    asked = normal(question)
    checked: list[SentenceSupport] = []
    links: set[str] = set()
    for sentence, sources in zip(sentences, chosen):
        haystack = " \n ".join([asked, *(normal_passages.get(n, "") for n in sources)])
        claims = claims_in(sentence.text)
        missing = [claim.text for claim in claims if not found_in(claim, haystack)]
        links |= {claim.text for claim in claims if claim.kind == "link" and claim.text not in missing}
        status = UNCHECKED if not claims else UNSUPPORTED if missing else SUPPORTED
        checked.append({"text": sentence.text, "sources": sources, "status": status, "missing": missing})
    return {
        "sentences": checked,
        "supported": sum(s["status"] == SUPPORTED for s in checked),
        "unsupported": sum(s["status"] == UNSUPPORTED for s in checked),
        "links": sorted(links),
    }


def nothing_supported(support: Support) -> bool:
    """Some sentence made a claim, and no claim-making sentence held up."""
    return support.get("unsupported", 0) > 0 and support.get("supported", 0) == 0


def unsupported_spans(text: str, support: Support) -> list[tuple[int, list[str]]]:
    """Where each unsupported sentence ends in ``text`` and what it states that no source does
    (for marking it in the rendered answer)."""
    flagged = {s["text"]: s["missing"] for s in support.get("sentences", []) if s["status"] == UNSUPPORTED}
    return [(s.end, flagged[s.text]) for s in split_sentences(text) if s.text in flagged]
