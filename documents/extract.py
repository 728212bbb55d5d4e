"""Turn an uploaded file into text sections (title, page, text) for chunking."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from charset_normalizer import from_bytes

SUPPORTED_SUFFIXES = {".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown"}
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


class ExtractionError(Exception):
    """The file cannot be read as a document; the message is shown to people as is."""


@dataclass(frozen=True)
class Section:
    heading: str
    text: str
    page: int | None = None


def mime_for(path: Path) -> str:
    mime = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if mime is None:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise ExtractionError(f"unsupported file type {path.suffix or '(none)'}; supported: {supported}")
    return mime


def decode_text(data: bytes) -> str:
    """Text of ``data`` in whatever common encoding it uses (detected, not assumed UTF-8)."""
    if not data.strip():
        raise ExtractionError("the file is empty")
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExtractionError("the file looks binary, not text")
    best = from_bytes(data).best()
    if best is None:
        raise ExtractionError("the file's text encoding could not be detected")
    return str(best)


def extract_sections(data: bytes, mime: str) -> list[Section]:
    text = decode_text(data)
    if mime == "text/markdown":
        return markdown_sections(text)
    return [Section(heading="", text=text)]


def markdown_sections(text: str) -> list[Section]:
    """Split Markdown at headings; each section remembers its heading path ("A › B")."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(heading=" › ".join(title for _, title in path), text=body))
        lines.clear()

    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            flush()
            level = len(match.group(1))
            path = [(lvl, title) for lvl, title in path if lvl < level] + [(level, match.group(2))]
        else:
            lines.append(line)
    flush()
    return sections


def title_for(path: Path, sections: list[Section]) -> str:
    for section in sections:
        if section.heading:
            return section.heading.split(" › ")[0][:300]
    return path.stem.replace("_", " ").replace("-", " ")[:300] or path.name
