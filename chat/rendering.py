"""Answer text → safe HTML: Markdown rendered by markdown-it, sanitised by nh3 (ammonia), with
citation markers [n] turned into links to the numbered sources, sentences the grounding check
found unsupported marked for the reader, and only the links found in the sources kept as links."""

from __future__ import annotations

import html as html_lib
import re

import nh3
from markdown_it import MarkdownIt

from .grounding import Support, unsupported_spans

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_CITATION = re.compile(r"\[(\d{1,2})\]")
_TAGS = {
    "p", "br", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h1", "h2", "h3",
    "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "hr", "sup",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title", "class", "data-n"}, "sup": {"class", "title"}}
# Stands where a flagged sentence ends until the HTML is built (a private-use character that
# markdown-it passes through as text; any in the answer itself is dropped, so it cannot forge one).
_MARK = "\ue000"
_MARK_HTML = re.compile(_MARK + r"(\d+)" + _MARK)


def _with_marks(text: str, ends: list[int]) -> str:
    """``text`` with mark i after position ``ends[i]`` (ascending), and no mark character of its own."""
    pieces, start = [], 0
    for index, end in enumerate(ends):
        pieces += [text[start:end].replace(_MARK, ""), f"{_MARK}{index}{_MARK}"]
        start = end
    return "".join([*pieces, text[start:].replace(_MARK, "")])


def render_answer(text: str, source_count: int, support: Support | None = None) -> str:
    """Sanitised HTML of ``text``; [n] for an existing source n becomes a citation link; each
    sentence ``support`` found unsupported is followed by a "not in the sources" mark naming what
    no source says; a link is kept only if ``support`` found it in the sources."""
    support = support or {}
    flagged = unsupported_spans(text, support)
    html = _markdown.render(_with_marks(text, [end for end, _ in flagged]))

    def cite(match: re.Match) -> str:
        n = int(match.group(1))
        if 1 <= n <= source_count:
            return f'<sup><a class="cite" href="#source-{n}" data-n="{n}">[{n}]</a></sup>'
        return match.group(0)

    def mark(match: re.Match) -> str:
        missing = ", ".join(flagged[int(match.group(1))][1])
        title = html_lib.escape(f"Not found in the cited sources: {missing}", quote=True)
        return f'<sup class="unsupported" title="{title}">not in the sources</sup>'

    html = _MARK_HTML.sub(mark, _CITATION.sub(cite, html))
    allowed = {link.rstrip("/") for link in support.get("links", [])}

    def keep_link(element: str, attribute: str, value: str) -> str | None:
        if element == "a" and attribute == "href" and not value.startswith("#source-"):
            return value if value.rstrip("/") in allowed else None
        return value

    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        attribute_filter=keep_link,
    )
