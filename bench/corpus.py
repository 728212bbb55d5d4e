"""The documents the concurrency benchmark's chats search, and the questions they ask about them.

- ``tiny``: three short Markdown documents (6 chunks), the benchmark's original corpus;
- ``pydoc``: the documentation of ~80 Python standard-library modules as ``pydoc`` renders it
  (the text ``help(json)`` shows), as Markdown with a heading per section, class and function:
  real technical prose of a few thousand chunks. Rendered once into
  ``var/bench-corpus/pydoc-py<version>/`` (the text depends on the Python version) and ingested
  once: identical files are not ingested again (the product dedupes by sha256).

Each corpus has its own collection in the bench database, and only the measured one is public
(both belong to the bench's staff user, who asks nothing), so a run searches only its own corpus.
The fake LLM echoes each question, so any corpus's questions work for the crossover check.
"""

from __future__ import annotations

import importlib
import pydoc
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Corpus:
    name: str
    collection: str
    files: tuple[str, ...]
    render: Callable[[str], str]  # a file's name -> its text
    questions: tuple[str, ...]
    cache: str | None = None  # folder under var/bench-corpus/ keeping the rendered files

    def numbered(self, i: int, tag: str) -> str:
        """Question ``i`` of a run, unique by its number after ``tag``."""
        return f"{self.questions[i % len(self.questions)]} #{tag}{i}"

    def write(self, folder: Path) -> list[Path]:
        """The corpus's files in ``folder``, rendered only where missing."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in self.files:
            path = folder / name
            if not path.exists():
                path.write_text(self.render(name))
            paths.append(path)
        return paths


# --- tiny: three short documents ------------------------------------------------------------------
DOCS = {
    "lighthouse.md": "# Harbor lighthouse\n\nThe Kestrel Point lighthouse was built in 1874 from granite blocks "
    "quarried on the island. Its lamp is visible for 22 nautical miles and flashes white every 6 seconds.\n\n"
    "## Keepers\n\nThe last keeper, Mara Lindqvist, left in 1986 when the light was automated.",
    "bakery.md": "# Sourdough at the Millstone bakery\n\nThe Millstone bakery feeds its sourdough starter twice a "
    "day with rye flour. Loaves proof for 14 hours in the cold room before baking at 250 degrees.\n\n"
    "## Opening hours\n\nThe bakery opens at 7 in the morning and closes when the bread is sold out.",
    "orchard.md": "# Apple orchard care\n\nThe orchard grows 40 varieties of apple. Trees are pruned in late "
    "winter and the harvest starts in September.\n\n## Pests\n\nCodling moth is controlled with pheromone "
    "traps hung in May.",
}

TINY = Corpus(
    name="tiny",
    collection="bench-public",
    files=tuple(DOCS),
    render=DOCS.__getitem__,
    questions=(
        "When was the Kestrel Point lighthouse built?",
        "How far is the lighthouse lamp visible?",
        "How often is the sourdough starter fed at the Millstone bakery?",
        "How long do the loaves proof before baking?",
        "When are the apple trees pruned?",
        "How is codling moth controlled in the orchard?",
    ),
)


# --- pydoc: the standard library's documentation -------------------------------------------------
PYDOC_MODULES = """
    json asyncio collections pathlib re datetime logging argparse sqlite3 email http.client urllib.request csv
    zipfile tarfile shutil subprocess threading multiprocessing itertools functools typing unittest decimal
    fractions statistics random string textwrap difflib heapq bisect array struct codecs locale calendar time os
    io socket ssl select selectors signal tempfile glob fnmatch pickle copy pprint enum dataclasses contextlib
    abc inspect traceback warnings weakref gc hashlib hmac secrets base64 binascii uuid ipaddress html
    xml.etree.ElementTree configparser getpass platform sched queue concurrent.futures
""".split()

SECTION = re.compile(r"^[A-Z][A-Z ]*$")  # pydoc's top-level sections: NAME, DESCRIPTION, CLASSES, FUNCTIONS ...
ENTRY = re.compile(r"^    (?:class )?([A-Za-z_]\w*)\(")  # a class or function documented in a section


def pydoc_markdown(file_name: str) -> str:
    """A module's pydoc text as Markdown: a heading per section and per documented class or function."""
    module = file_name.removesuffix(".md")
    text = pydoc.render_doc(importlib.import_module(module), renderer=pydoc.plaintext)
    lines = [f"# {module} (Python standard library)"]
    for line in text.splitlines()[1:]:  # the first line: "Python Library Documentation: ..."
        entry = ENTRY.match(line)
        if SECTION.match(line):
            lines.append(f"## {module}: {line.title()}")
        elif entry:
            lines += [f"### {module}.{entry.group(1)}", line.strip()]
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


PYDOC = Corpus(
    name="pydoc",
    collection="bench-pydoc",
    files=tuple(f"{module}.md" for module in PYDOC_MODULES),
    render=pydoc_markdown,
    questions=(
        "What does json.dumps do with the indent argument?",
        "How do I create a temporary directory with tempfile?",
        "What does collections.Counter.most_common return?",
        "How does functools.lru_cache behave when maxsize is None?",
        "What does shutil.copytree do when dirs_exist_ok is true?",
        "What happens in subprocess.run when the timeout expires?",
        "What does itertools.groupby return?",
        "How does re.sub use a function as the replacement?",
        "What does heapq.heappushpop do?",
        "What does bisect.insort do?",
        "How do I compute a message digest with hmac.new?",
        "What does secrets.token_hex return?",
        "How does textwrap.dedent treat lines that contain only whitespace?",
        "What does statistics.median return for an even number of data points?",
        "How does threading.Event.wait behave with a timeout?",
        "How does base64.urlsafe_b64encode differ from b64encode?",
        "What does contextlib.suppress do?",
        "What does uuid.uuid4 generate?",
        "What does asyncio.wait_for do when the timeout expires?",
        "How does zipfile.ZipFile.extractall choose where to write the files?",
    ),
    cache=f"pydoc-py{sys.version_info.major}.{sys.version_info.minor}",
)


def pydoc_html(file_name: str) -> str:
    """A module's documentation page as ``pydoc -w`` writes it (HTML)."""
    module = file_name.removesuffix(".html")
    return pydoc.html.page(
        pydoc.describe(importlib.import_module(module)), pydoc.html.document(importlib.import_module(module), module)
    )


# 60 pages of HTML documentation: the ingestion benchmark's corpus (bench/ingest.py).
PYDOC_HTML = Corpus(
    name="pydoc-html",
    collection="bench-pydoc-html",
    files=tuple(f"{module}.html" for module in PYDOC_MODULES[:60]),
    render=pydoc_html,
    questions=PYDOC.questions,
    cache=f"pydoc-html-py{sys.version_info.major}.{sys.version_info.minor}",
)

CORPORA = {corpus.name: corpus for corpus in (TINY, PYDOC, PYDOC_HTML)}


# --- in the bench database -----------------------------------------------------------------------
def ensure_corpus(corpus: Corpus, owner) -> None:
    """The corpus ingested into its collection (files already there are skipped), and only its
    collection public; prints its size."""
    from django.conf import settings

    from documents.models import Chunk, Collection

    collection, _ = Collection.objects.get_or_create(name=corpus.collection, defaults={"owner": owner})
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="docchat-bench-") as scratch:
        folder = settings.VAR_DIR / "bench-corpus" / corpus.cache if corpus.cache else Path(scratch)
        paths = corpus.write(folder)
        ingested = sum(ingest(path, collection) for path in paths)
    bench_collections = Collection.objects.filter(name__in=[c.collection for c in CORPORA.values()])
    bench_collections.update(owner=owner, is_public=False)
    Collection.objects.filter(pk=collection.pk).update(is_public=True)
    chunks = Chunk.objects.filter(document__collection=collection).count()
    kept = f"; its files are kept in {folder}" if corpus.cache else ""
    print(
        f"corpus {corpus.name}: {len(paths)} files, {chunks} chunks in collection {corpus.collection} "
        f"({ingested} files ingested by this run, {time.monotonic() - started:.0f} s){kept}",
        flush=True,
    )


def ingest(path: Path, collection) -> bool:
    """``path`` ingested into ``collection`` unless it already is (a document an interrupted run
    left half-done is processed again); whether it was new."""
    from documents.actions import do_ingest_file

    started = time.monotonic()
    result = do_ingest_file(path, collection)
    if result.document.status != "ready":
        raise SystemExit(f"ingesting {path.name} failed: {result.document.error}")
    if result.created:
        chunks = result.document.chunks.count()
        print(f"  ingested {path.name}: {chunks} chunks, {time.monotonic() - started:.1f} s", flush=True)
    return result.created
