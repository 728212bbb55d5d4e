"""Answer text → safe HTML: Markdown rendered by markdown-it, sanitised by nh3 (ammonia), with
citation markers [n] turned into links to the numbered sources."""

from __future__ import annotations

import re

import nh3
from markdown_it import MarkdownIt

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_CITATION = re.compile(r"\[(\d{1,2})\]")
_TAGS = {
    "p", "br", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h1", "h2", "h3",
    "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "hr", "sup",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title", "class", "data-n"}}


def render_answer(text: str, source_count: int) -> str:
    """Sanitised HTML of ``text``; [n] for an existing source n becomes a citation link."""
    html = _markdown.render(text)

    def cite(match: re.Match) -> str:
        n = int(match.group(1))
        if 1 <= n <= source_count:
            return f'<sup><a class="cite" href="#source-{n}" data-n="{n}">[{n}]</a></sup>'
        return match.group(0)

    html = _CITATION.sub(cite, html)
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
    )
