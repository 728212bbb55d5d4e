"""Turn an uploaded file into text sections (title, page, text) for chunking.

Supported: plain text, Markdown, PDF (one section per page, for page citations), DOCX and HTML
(sections at headings). Every way a file can be unreadable ends in an ``ExtractionError`` whose
message is shown to people as is.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import docx
import lxml.etree
from bs4.dammit import EncodingDetector
from charset_normalizer import from_bytes
from django.conf import settings
from docx.document import Document as DocxDocument
from docx.table import Table, _Cell
from docx.text.paragraph import Paragraph
from pypdf import PasswordType, PdfReader

logger = logging.getLogger(__name__)
T = TypeVar("T")

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
SUPPORTED_SUFFIXES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".pdf": PDF,
    ".docx": DOCX,
    ".html": HTML,
    ".htm": HTML,
}
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_DOCX_HEADING_STYLE = re.compile(r"^heading (\d)$", re.IGNORECASE)
# Word's XML parts compress roughly tenfold; a big part far beyond that is a zip bomb even when
# the total stays under MAX_DOCX_UNCOMPRESSED_BYTES.
_DOCX_MAX_RATIO = 100
_DOCX_RATIO_MIN_BYTES = 10 * 1024 * 1024
_HTML_DROPPED = [
    "script",
    "style",
    "noscript",
    "template",
    "iframe",
    "svg",
    "canvas",
    "nav",
]
_HTML_HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
_HTML_BLOCKS = [
    "p", "div", "section", "article", "main", "aside", "header", "footer", "blockquote", "pre",
    "ul", "ol", "li", "dl", "dt", "dd", "table", "tr", "caption", "figure", "figcaption",
    "address", "hr", "form", "fieldset", "details", "summary",
]  # fmt: skip
# Marks where a table cell starts while HTML text is gathered; a private-use character, since
# str.split() would take a control character such as \x1f for whitespace.
_CELL_MARK = "\ue000"
# Web pages labelled Latin-1 or ASCII are really windows-1252 (the WHATWG Encoding standard).
_WEB_ENCODINGS = {name: "cp1252" for name in ("iso-8859-1", "latin-1", "latin1", "ascii", "us-ascii")}

# A block of a document in reading order: (heading level, heading text) or (None, body text).
Block = tuple[int | None, str]


class ExtractionError(Exception):
    """The file cannot be read as a document; the message is shown to people as is."""


@dataclass(frozen=True)
class Section:
    heading: str
    text: str
    page: int | None = None


class Sections(list[Section]):
    """The sections of a document, and the title the file declares itself (HTML ``<title>``)."""

    def __init__(self, sections: Iterable[Section] = (), title: str = "") -> None:
        super().__init__(sections)
        self.title = title


def mime_for(path: Path) -> str:
    mime = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if mime is None:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise ExtractionError(f"unsupported file type {path.suffix or '(none)'}; supported: {supported}")
    return mime


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Text of ``data`` in whatever common encoding it uses (detected, not assumed UTF-8).

    An encoding the file ``declared`` itself is trusted first, as browsers do: detection can
    mistake one legacy encoding for another on a short text."""
    if not data.strip():
        raise ExtractionError("the file is empty")
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExtractionError("the file looks binary, not text")
    if declared:
        try:
            return data.decode(_WEB_ENCODINGS.get(declared.lower(), declared))
        except (LookupError, UnicodeDecodeError):
            pass  # a wrong or unknown declaration: detect instead
    best = from_bytes(data).best()
    if best is None:
        raise ExtractionError("the file's text encoding could not be detected")
    return str(best)


def extract_sections(data: bytes, mime: str) -> Sections:
    """The file's text as sections in reading order, with the title the file declares, if any."""
    extractor = _EXTRACTORS.get(mime)
    if extractor is None:
        raise ExtractionError(f"unsupported file type {mime}")
    sections = extractor(data)
    # PostgreSQL text cannot hold NUL, and PDF text extraction emits it for unmapped glyphs.
    clean = (replace(s, heading=s.heading.replace("\x00", ""), text=s.text.replace("\x00", "")) for s in sections)
    return Sections(clean, _title_of(sections))


def title_for(path: Path, sections: list[Section]) -> str:
    """The title the file declares, else its first top heading, else its name made readable."""
    if declared := _title_of(sections):
        return declared[:300]
    for section in sections:
        if section.heading:
            return section.heading.split(" › ")[0][:300]
    return path.stem.replace("_", " ").replace("-", " ")[:300] or path.name


def _title_of(sections: list[Section]) -> str:
    return sections.title if isinstance(sections, Sections) else ""


def heading_sections(blocks: Iterable[Block], separator: str) -> list[Section]:
    """Sections split at headings; each remembers its heading path ("A › B").

    Body blocks under one heading are joined with ``separator``; a heading with no body under it
    yields no section of its own (its title lives on in the path of its subsections)."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    for level, text in blocks:
        if level is None:
            body.append(text)
            continue
        _append_section(sections, path, body, separator)
        path = [(lvl, title) for lvl, title in path if lvl < level] + [(level, text)]
        body = []
    _append_section(sections, path, body, separator)
    return sections


def _append_section(
    sections: list[Section],
    path: list[tuple[int, str]],
    body: list[str],
    separator: str,
) -> None:
    text = separator.join(body).strip()
    if text:
        sections.append(Section(heading=" › ".join(title for _, title in path), text=text))


# --- Text and Markdown --------------------------------------------------------------------------
def text_sections(data: bytes) -> list[Section]:
    return [Section(heading="", text=decode_text(data))]


def markdown_sections(text: str) -> list[Section]:
    """Split Markdown at headings; each section remembers its heading path ("A › B")."""
    return heading_sections(_markdown_blocks(text), separator="\n")


def _markdown_blocks(text: str) -> Iterator[Block]:
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        yield (len(match.group(1)), match.group(2)) if match else (None, line)


# --- PDF ----------------------------------------------------------------------------------------
def pdf_sections(data: bytes) -> list[Section]:
    """One section per page that has text, with its 1-based page number for citations."""
    reader = _open_pdf(data)
    _check_pdf_pages(reader)
    texts = _pdf_guard(lambda: [page.extract_text() or "" for page in reader.pages])
    sections = [Section(heading="", text=text, page=n) for n, text in enumerate(texts, 1) if text.strip()]
    if not sections:
        raise ExtractionError("the PDF has no text layer (a scan? run OCR on it first)")
    return sections


def _open_pdf(data: bytes) -> PdfReader:
    reader = _pdf_guard(lambda: PdfReader(io.BytesIO(data)))
    if _pdf_guard(lambda: reader.is_encrypted) and not _decrypts_without_password(reader):
        raise ExtractionError("the PDF is encrypted")
    return reader


def _decrypts_without_password(reader: PdfReader) -> bool:
    # Many PDFs are encrypted only to restrict printing or editing, with an empty user password.
    try:
        return reader.decrypt("") != PasswordType.NOT_DECRYPTED
    except Exception:  # a broken encryption dictionary, or an algorithm pypdf cannot run here
        logger.info("PDF decryption with an empty password failed", exc_info=True)
        return False


def _check_pdf_pages(reader: PdfReader) -> None:
    pages = _pdf_guard(lambda: len(reader.pages))
    if pages > settings.MAX_PDF_PAGES:
        raise ExtractionError(f"the PDF has {pages} pages, more than the limit of {settings.MAX_PDF_PAGES}")


def _pdf_guard(step: Callable[[], T]) -> T:
    # pypdf reports a malformed file with almost any exception type (KeyError, TypeError, ...),
    # from any step, so the boundary to pypdf catches them all.
    try:
        return step()
    except ExtractionError:
        raise
    except Exception as exc:
        logger.info("unreadable PDF: %s: %s", type(exc).__name__, exc)
        raise ExtractionError("the PDF is corrupt or unreadable") from exc


# --- DOCX ---------------------------------------------------------------------------------------
def docx_sections(data: bytes) -> list[Section]:
    """Paragraphs and table rows in reading order, split at the Title and Heading N styles."""
    _check_docx_archive(data)
    try:
        blocks = list(_docx_blocks(docx.Document(io.BytesIO(data))))
    except Exception as exc:  # python-docx and lxml raise many types for a broken package
        logger.info("unreadable DOCX: %s: %s", type(exc).__name__, exc)
        raise ExtractionError("the DOCX is corrupt or unreadable") from exc
    return heading_sections(blocks, separator="\n\n")


def _check_docx_archive(data: bytes) -> None:
    """Refuse a zip bomb before python-docx inflates it.

    The sizes checked are the ones the archive declares; that is enough, because ``zipfile``
    never inflates a member beyond its declared size (the CRC check fails instead)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ExtractionError("the DOCX is corrupt or unreadable") from exc
    limit = settings.MAX_DOCX_UNCOMPRESSED_BYTES
    if sum(member.file_size for member in members) > limit:
        raise ExtractionError(f"the DOCX expands to more than {_megabytes(limit)} MB (zip bomb?)")
    if any(_is_inflated(member) for member in members):
        raise ExtractionError(f"the DOCX expands more than {_DOCX_MAX_RATIO} times its size (zip bomb?)")


def _is_inflated(member: zipfile.ZipInfo) -> bool:
    big = member.file_size > _DOCX_RATIO_MIN_BYTES
    return big and member.file_size > _DOCX_MAX_RATIO * max(member.compress_size, 1)


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g}"


def _docx_blocks(document: DocxDocument) -> Iterator[Block]:
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            yield from ((None, row) for row in _table_rows(item))
        elif text := item.text.strip():
            yield _docx_heading_level(item), text


def _docx_heading_level(paragraph: Paragraph) -> int | None:
    name = (paragraph.style.name if paragraph.style is not None else None) or ""
    if name == "Title":
        return 0  # above Heading 1, so the title heads the path like a Markdown "# Title"
    match = _DOCX_HEADING_STYLE.match(name)
    return int(match.group(1)) if match else None


def _table_rows(table: Table) -> Iterator[str]:
    """Each row as "cell | cell", a merged cell once (python-docx repeats it per grid column)."""
    for row in table.rows:
        cells: list[_Cell] = []
        for cell in row.cells:
            if not cells or cell._tc is not cells[-1]._tc:
                cells.append(cell)
        texts = [" ".join(cell.text.split()) for cell in cells]
        if any(texts):
            yield " | ".join(texts)


# --- HTML ---------------------------------------------------------------------------------------
def html_sections(data: bytes) -> Sections:
    """The page's main content split at h1–h6, without scripts, styles and navigation."""
    declared = EncodingDetector.find_declared_encoding(data, is_html=True)
    text = decode_text(data, declared).replace(_CELL_MARK, "")  # page text cannot forge the mark
    page = _HtmlEvents.parse(text)
    return Sections(heading_sections(page.blocks(), separator="\n\n"), page.title())


_START, _END, _TEXT = 0, 1, 2


class _HtmlEvents:
    """The page as lxml's parser reports it (start tag, end tag, text), with no tree built.

    BeautifulSoup's tree over the same parser cost 5x the CPU (2.5 s vs 0.5 s for 60 pages of
    documentation), on a core the embedding engine wants; lxml's own tree stops at 256 levels of
    nesting and drops what follows. Events have neither problem: a flat list, any depth."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []
        self.ends: dict[int, int] = {}  # index of a start event -> index of its end event
        self._open: list[int] = []

    @classmethod
    def parse(cls, text: str) -> _HtmlEvents:
        page = cls()
        parser = lxml.etree.HTMLParser(target=page, encoding="utf-8")
        try:
            parser.feed(text.encode("utf-8"))
            parser.close()
        except lxml.etree.LxmlError:  # nothing parseable: no content
            page.events.clear()
        return page

    # The parser target's interface (comments, doctype and processing instructions are dropped).
    def start(self, tag: str, attrib: object) -> None:
        self._open.append(len(self.events))
        self.events.append((_START, tag))

    def end(self, tag: str) -> None:
        self.ends[self._open.pop()] = len(self.events)
        self.events.append((_END, tag))

    def data(self, text: str) -> None:
        if self.events and self.events[-1][0] == _TEXT:  # one text node may come in pieces
            self.events[-1] = (_TEXT, self.events[-1][1] + text)
        else:
            self.events.append((_TEXT, text))

    def close(self) -> None:
        while self._open:  # the parser closes what the page left open; this is in case it did not
            self.end("")

    def first(self, tag: str, limit: int = 1) -> list[int]:
        found = [i for i, (kind, name) in enumerate(self.events) if kind == _START and name == tag]
        return found[:limit]

    def text_of(self, start: int, separator: str = " ") -> str:
        """The text inside the element starting at ``start`` (BeautifulSoup's ``get_text``)."""
        inside, skipping = [], 0
        for kind, value in self.events[start + 1 : self.ends[start]]:
            if kind == _START and value in ("script", "style"):
                skipping += 1
            elif kind == _END and value in ("script", "style"):
                skipping -= 1
            elif kind == _TEXT and not skipping:
                inside.append(value)
        return separator.join(inside)

    def title(self) -> str:
        for found in (self.first("title"), self.first("h1")):
            if found and (text := _squash(self.text_of(found[0]))):
                return text
        return ""

    def content_root(self) -> tuple[int, int]:
        """Events of the page's content: <main>, else a lone <article>, else <body>, else all."""
        articles = self.first("article", limit=2)
        for found in (self.first("main"), articles if len(articles) == 1 else [], self.first("body")):
            if found:
                return found[0], self.ends[found[0]] + 1
        return 0, len(self.events)

    def blocks(self) -> Iterator[Block]:
        """Paragraphs and headings of the content, in reading order."""
        inline: list[str] = []
        open_blocks: list[tuple[bool, bool]] = []  # per open element: (is a block, inside an article)
        i, stop = self.content_root()
        while i < stop:
            kind, value = self.events[i]
            in_piece = bool(open_blocks) and open_blocks[-1][1]
            if kind == _TEXT:
                inline.append(value)
            elif kind == _END:
                if open_blocks.pop()[0]:
                    yield from _html_paragraph(inline)
            elif value in _HTML_DROPPED or (value in ("header", "footer") and not in_piece):
                # A page's <header>/<footer> is site chrome (logo, links, copyright); one inside an
                # <article> or <section> holds that piece's own title and byline, which are content.
                i = self.ends[i]
            elif value in _HTML_HEADINGS or value == "pre":
                yield from _html_paragraph(inline)
                yield from self._heading_or_pre(i, value)
                i = self.ends[i]
            else:
                if value == "br":
                    inline.append(" ")
                elif value in ("td", "th"):
                    inline.append(_CELL_MARK)
                block = value in _HTML_BLOCKS
                if block:
                    yield from _html_paragraph(inline)
                open_blocks.append((block, in_piece or value in ("article", "section")))
            i += 1
        yield from _html_paragraph(inline)  # text outside any block element (a bare <body>) counts too

    def _heading_or_pre(self, start: int, tag: str) -> Iterator[Block]:
        if tag == "pre":  # its line breaks and indentation are content
            text, level = self.text_of(start, separator="").strip("\n"), None
        else:
            text, level = _squash(self.text_of(start)), int(tag[1])
        if text.strip():
            yield level, text


def _html_paragraph(inline: list[str]) -> Iterator[Block]:
    """The text gathered since the last block boundary, as one paragraph (cells as "a | b")."""
    text = _squash("".join(inline)).strip(_CELL_MARK + " ").replace(_CELL_MARK, " | ")
    inline.clear()
    if text:
        yield None, _squash(text)


def _squash(text: str) -> str:
    """``text`` with runs of whitespace as single spaces, as a browser shows it."""
    return " ".join(text.split())


_EXTRACTORS: dict[str, Callable[[bytes], list[Section]]] = {
    "text/plain": text_sections,
    "text/markdown": lambda data: markdown_sections(decode_text(data)),
    PDF: pdf_sections,
    DOCX: docx_sections,
    HTML: html_sections,
}
