"""Ingestion throughput benchmark: the whole pipeline against the embedding model alone.

What it measures, in one run and side by side:

* raw: ``SentenceTransformer.encode`` (the process-wide model of ``documents.embedding.get_model``,
  ``batch_size=settings.EMBEDDING_BATCH_SIZE``, normalised, as ``documents.embedding.encode``
  calls it) over exactly the chunk texts the pipeline will store. The texts are computed with the
  pipeline's own ``extract_sections`` + ``chunk_sections`` (same settings, same token counter),
  and the run checks afterwards that the stored chunks are these very texts. Two variants:
  ``raw, one call`` (every chunk in one ``encode`` call: the model's ceiling) and ``raw, per
  document`` (one call per document in batches of EMBEDDING_BATCH_SIZE, as the pipeline batches).
* pipeline: ``documents.actions.do_ingest_file`` for every file of the corpus into a fresh
  collection (register + store the file, extract, chunk, embed, write the chunks and their
  full-text vectors, statuses and progress heartbeats) in the database ``docchat_bench_ingest``
  of the embedded PostgreSQL; the time spent inside ``documents.embedding.encode`` is recorded
  too, so the table shows what the rest of the pipeline costs.
* candidate (``--small-batch``, default 4): per-document encode calls with ``batch_size=4``, raw and
  through the pipeline (``embedding.encode`` patched in this process only), since a document's
  ~10 chunks of mixed lengths in one batch pad ~40% extra tokens.

Throughput is chunks per second; the headline ratio is pipeline / raw (one call): 1.0 means
ingestion is as fast as the model alone (goal >= 0.8). The raw runs are made before and after the
pipeline (raw, raw per document, pipeline, raw per document, raw) and averaged, so neither side
profits from a warmer cache or suffers from a drift of the machine's load.

Optionally (``--onnx auto``, the default) the same texts are also encoded with ONNX Runtime:
first ``SentenceTransformer(path, backend="onnx")`` is tried (it needs ``optimum`` and
``onnxruntime``, and exports the model if the folder has no ONNX file); if that is impossible and
``onnxruntime`` + ``onnx`` can be imported (from the venv or from ``--onnx-site``, a folder
appended to sys.path so nothing in the venv changes), the model is exported with
``torch.onnx.export`` in a subprocess and run directly with onnxruntime (same tokenizer, mean
pooling and normalisation as the model's modules); its vectors are compared with the torch ones.

The corpus is generated Markdown (seeded): titled documents with ``##``/``###`` sections, prose
paragraphs of varied sentences, some bullet lists. Defaults: 200 documents, ~2,000 chunks.

Run from the project folder (takes ~5-10 minutes on 2 cores; waits first, up to
``--wait-quiet`` seconds, for the machine to be quiet)::

    .venv/bin/python bench/ingest.py [--docs 200] [--paragraphs 12] [--onnx auto|off]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a file: the project root, not bench/, first on sys.path (see bench/common.py)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import (
    add_wait_quiet_argument,
    command_line,
    machine_cpu_seconds,
    print_header,
    setup_django,
    wait_until_quiet,
)

BENCH_DB = "docchat_bench_ingest"
COLLECTION_PREFIX = "bench-ingest-"
OWNER = "bench-ingest"
DEFAULT_ONNX_SITE = "/tmp/docchat-onnx-pkgs"


# --- command line -----------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200, help="documents in the corpus")
    parser.add_argument(
        "--paragraphs",
        type=int,
        default=12,
        help="prose paragraphs per document (about 0.85 chunk each with the default chunk size)",
    )
    parser.add_argument("--seed", type=int, default=1, help="corpus random seed")
    parser.add_argument(
        "--onnx",
        choices=("auto", "off"),
        default="auto",
        help="also time ONNX Runtime if it can be used without installing anything",
    )
    parser.add_argument(
        "--onnx-site",
        default=DEFAULT_ONNX_SITE,
        help="extra folder appended to sys.path for onnxruntime/onnx (if it exists)",
    )
    parser.add_argument(
        "--small-batch",
        type=int,
        default=4,
        help="also time per-document calls with this encode batch_size (a candidate fix; 0: skip)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=1200,
        help="stop the pipeline run after this long (throughput from the documents done)",
    )
    add_wait_quiet_argument(parser)
    parser.add_argument("--keep-corpus", action="store_true", help="keep the generated files (path printed)")
    args = parser.parse_args()
    if args.docs < 1 or args.paragraphs < 1:
        parser.error("--docs and --paragraphs must be positive")
    return args


# --- the corpus -------------------------------------------------------------------------------
TOPICS = {
    "Harbour operations": {
        "things": ["container crane", "pilot boat", "berth schedule", "tide table", "mooring line",
                   "dredging plan", "ferry terminal", "customs shed", "fuel barge", "breakwater"],
        "people": ["harbour master", "pilot", "crane operator", "dock worker", "customs officer"],
        "verbs": ["inspects", "schedules", "repairs", "logs", "clears", "reroutes", "unloads"],
        "places": ["the north quay", "the outer basin", "berth 7", "the dry dock", "the lock gate"],
    },
    "Sourdough baking": {
        "things": ["starter", "levain", "rye flour", "proofing basket", "dutch oven", "crumb",
                   "crust", "autolyse", "bench rest", "hydration"],
        "people": ["baker", "apprentice", "miller", "pastry chef", "night shift"],
        "verbs": ["feeds", "shapes", "scores", "folds", "bakes", "weighs", "retards"],
        "places": ["the cold room", "the deck oven", "the mixing bench", "the flour store"],
    },
    "Network incident response": {
        "things": ["load balancer", "firewall rule", "certificate", "DNS record", "BGP session",
                   "packet capture", "runbook", "pager alert", "status page", "rollback"],
        "people": ["on-call engineer", "incident commander", "network lead", "SRE", "vendor"],
        "verbs": ["triages", "escalates", "mitigates", "rolls back", "documents", "monitors"],
        "places": ["the edge cluster", "region eu-west", "the staging network", "the data centre"],
    },
    "Orchard management": {
        "things": ["rootstock", "pruning cut", "codling moth trap", "pollinator strip", "graft",
                   "irrigation line", "frost fan", "soil sample", "harvest bin", "cider press"],
        "people": ["grower", "picker", "agronomist", "beekeeper", "orchard manager"],
        "verbs": ["prunes", "grafts", "samples", "irrigates", "thins", "harvests", "records"],
        "places": ["the south block", "the young orchard", "the packing shed", "row 14"],
    },
    "Clinical trial logistics": {
        "things": ["consent form", "randomisation list", "sample kit", "cold chain", "case report",
                   "site visit", "adverse event", "protocol amendment", "drug supply", "audit trail"],
        "people": ["study nurse", "monitor", "principal investigator", "pharmacist", "sponsor"],
        "verbs": ["reviews", "ships", "reconciles", "reports", "approves", "archives", "queries"],
        "places": ["site 12", "the central lab", "the depot", "the ethics committee"],
    },
    "Railway maintenance": {
        "things": ["track circuit", "points heater", "ballast", "overhead line", "sleeper",
                   "signal relay", "possession", "tamping machine", "axle counter", "level crossing"],
        "people": ["track engineer", "signaller", "lookout", "possession planner", "inspector"],
        "verbs": ["tamps", "replaces", "tests", "patrols", "isolates", "certifies", "renews"],
        "places": ["the junction", "platform 3", "the tunnel portal", "the freight loop"],
    },
    "Library digitisation": {
        "things": ["manuscript", "scanner cradle", "metadata record", "colour target", "OCR layer",
                   "catalogue entry", "archival box", "IIIF manifest", "checksum", "loan request"],
        "people": ["conservator", "cataloguer", "imaging technician", "archivist", "researcher"],
        "verbs": ["scans", "catalogues", "conserves", "validates", "publishes", "migrates"],
        "places": ["the reading room", "the imaging studio", "the strongroom", "the repository"],
    },
    "Solar farm operations": {
        "things": ["inverter", "string fuse", "tracker motor", "panel soiling", "grid export",
                   "thermal image", "combiner box", "battery container", "weather station", "SCADA"],
        "people": ["site technician", "grid operator", "asset manager", "electrician", "ecologist"],
        "verbs": ["cleans", "resets", "curtails", "inspects", "forecasts", "replaces", "commissions"],
        "places": ["array B", "the substation", "the east field", "the control room"],
    },
}  # fmt: skip
ADJECTIVES = ["new", "older", "spare", "faulty", "main", "temporary", "shared", "daily", "weekly",
              "critical", "secondary", "manual", "automatic", "seasonal", "backup"]  # fmt: skip
TIMES = ["every morning", "before noon", "at the end of each shift", "twice a week", "in winter",
         "after heavy rain", "during the night", "once a quarter", "on Mondays", "in late spring"]  # fmt: skip
REASONS = ["the last audit found gaps", "the old process was too slow", "a supplier changed",
           "two incidents happened in a row", "costs rose by {n} percent", "staff asked for it",
           "the regulator requires it", "the weather became less predictable"]  # fmt: skip
SENTENCES = [
    "The {person} {verb} the {adj} {thing} {time}.",
    "At {place}, the {thing} is checked by the {person} {time}, and any fault is written down.",
    "Since {reason}, the {person} now {verb} the {thing} {time}.",
    "A {adj} {thing} costs about {n} euros and lasts roughly {m} years.",
    "If the {thing} fails, the {person} {verb} the {thing2} at {place} instead.",
    "Nobody should touch the {thing} at {place} without telling the {person} first.",
    "In {year}, {n} of them were replaced after {reason}.",
    "The {thing2} depends on the {thing}; when one stops, the other follows within {m} hours.",
    "Why does the {person} check the {thing} {time}? Because {reason}.",
    "Records of every {thing} are kept for {m} years, then archived at {place}.",
    "The {adj} {thing2} at {place} handles up to {n} units per day.",
    "Most problems with the {thing} start small: a warning, a delay, then a stop.",
    "The {person} and the {person2} agree on the {thing} plan at the start of the week.",
    "Measurements taken {time} show a variation of {m} percent at most.",
    "Do not mix up the {thing} and the {thing2}: they look alike but behave very differently.",
    "Training for the {thing} takes {m} days, and every new {person} must complete it.",
    "The budget for the {thing2} was cut by {m} percent in {year}, which delayed the work at {place}.",
    "When in doubt, the {person} {verb} the {thing} again rather than guess.",
]  # fmt: skip
HEADINGS = ["Overview", "Daily routine", "Safety rules", "Equipment", "Costs", "History",
            "Common faults", "Who does what", "Schedules", "Records", "Training", "Open questions",
            "Suppliers", "Lessons learned", "Checklist", "Glossary", "Contacts", "Planned changes"]  # fmt: skip


def sentence(rng: random.Random, vocab: dict) -> str:
    things = rng.sample(vocab["things"], 2)
    people = rng.sample(vocab["people"], 2)
    return rng.choice(SENTENCES).format(
        person=people[0], person2=people[1], verb=rng.choice(vocab["verbs"]),
        thing=things[0], thing2=things[1], adj=rng.choice(ADJECTIVES),
        time=rng.choice(TIMES), place=rng.choice(vocab["places"]),
        reason=rng.choice(REASONS).format(n=rng.randint(5, 40)),
        n=rng.randint(2, 900), m=rng.randint(2, 30), year=rng.randint(1990, 2025),
    )  # fmt: skip


def paragraph(rng: random.Random, vocab: dict) -> str:
    return " ".join(sentence(rng, vocab) for _ in range(rng.randint(3, 7)))


def document(rng: random.Random, number: int, paragraphs: int) -> str:
    """One Markdown document: a title, an introduction, then sections of 1-4 paragraphs, some with
    a subsection or a bullet list."""
    topic = rng.choice(list(TOPICS))
    vocab = TOPICS[topic]
    lines = [f"# {topic}: notes {number}", "", paragraph(rng, vocab), ""]
    left = paragraphs - 1
    for heading in rng.sample(HEADINGS, len(HEADINGS)):
        if left <= 0:
            break
        lines += [f"## {heading}", ""]
        for _ in range(min(left, rng.randint(1, 4))):
            lines += [paragraph(rng, vocab), ""]
            left -= 1
        if rng.random() < 0.3:
            lines += [f"- {sentence(rng, vocab)}" for _ in range(rng.randint(3, 6))] + [""]
        if left > 0 and rng.random() < 0.3:
            lines += [f"### {rng.choice(vocab['things']).capitalize()}", "", paragraph(rng, vocab), ""]
            left -= 1
    while left > 0:  # more paragraphs than headings: a long last section
        lines += [paragraph(rng, vocab), ""]
        left -= 1
    return "\n".join(lines)


def write_corpus(folder: Path, docs: int, paragraphs: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for i in range(docs):
        path = folder / f"doc-{i:04d}.md"
        path.write_text(document(rng, i, paragraphs), encoding="utf-8")
        paths.append(path)
    return paths


def pipeline_texts(paths: list[Path]) -> list[list[str]]:
    """The chunk texts the pipeline will produce for each file, computed the pipeline's way."""
    from django.conf import settings

    from documents import embedding
    from documents.chunking import chunk_sections
    from documents.extract import extract_sections, mime_for

    out = []
    for path in paths:
        sections = extract_sections(path.read_bytes(), mime_for(path))
        drafts = chunk_sections(
            sections,
            max_tokens=settings.CHUNK_TOKENS,
            overlap_tokens=settings.CHUNK_OVERLAP_TOKENS,
            count_tokens=embedding.count_tokens,
        )
        out.append([d.text for d in drafts])
    return out


# --- timing -----------------------------------------------------------------------------------
def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Phase:
    name: str
    chunks: int
    seconds: float
    machine_cpu: float  # busy CPU seconds of the whole machine during the phase
    own_cpu: float  # CPU seconds of this process during the phase
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds

    @property
    def others_percent(self) -> float:
        """CPU used by other processes (Postgres included) during the phase, % of one core."""
        return 100 * (self.machine_cpu - self.own_cpu) / self.seconds


def timed(name: str, chunks: int, work) -> Phase:
    machine, own, started = machine_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    extra = work() or {}
    seconds = time.perf_counter() - started
    phase = Phase(name, chunks, seconds, machine_cpu_seconds() - machine, own_cpu_seconds() - own, extra)
    print(
        f"  {name}: {chunks} chunks in {seconds:.1f} s = {phase.rate:.1f} chunks/s "
        f"(others {phase.others_percent:.0f}% of a core)",
        flush=True,
    )
    return phase


# --- raw encoding -----------------------------------------------------------------------------
def encode_all(texts: list[str], batch_size: int | None = None) -> None:
    from django.conf import settings

    from documents.embedding import get_model

    get_model().encode(
        texts,
        batch_size=batch_size or settings.EMBEDDING_BATCH_SIZE,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


def encode_per_document(per_doc: list[list[str]], batch_size: int | None = None) -> None:
    """As ``_embed_in_batches`` calls the model: one call per EMBEDDING_BATCH_SIZE slice of a
    document (but without the DB heartbeat). With ``batch_size``, a candidate change: the same
    calls, but ``encode(batch_size=...)`` inside each, so the model's own sort by length makes
    batches of similar lengths (less padding)."""
    from django.conf import settings

    batch = settings.EMBEDDING_BATCH_SIZE
    for texts in per_doc:
        for start in range(0, len(texts), batch):
            encode_all(texts[start : start + batch], batch_size=batch_size)


def padding_factor(per_doc: list[list[str]], inner: int, calls_of: int | None = None) -> float:
    """Tokens the model processes (padding included) / real tokens, for per-document calls whose
    texts the model sorts by length and cuts into batches of ``inner`` (calls of ``calls_of`` texts,
    default EMBEDDING_BATCH_SIZE)."""
    from django.conf import settings

    from documents.embedding import count_tokens

    step = calls_of or settings.EMBEDDING_BATCH_SIZE
    real = padded = 0
    for texts in per_doc:
        for start in range(0, len(texts), step):
            lengths = sorted(
                (min(count_tokens(t) + 2, 256) for t in texts[start : start + step]),
                reverse=True,
            )
            real += sum(lengths)
            padded += sum(
                max(lengths[i : i + inner]) * len(lengths[i : i + inner]) for i in range(0, len(lengths), inner)
            )
    return padded / real


# --- the pipeline -----------------------------------------------------------------------------
def fresh_collection(name: str):
    """A new empty collection; earlier bench collections (and their chunks) are deleted."""
    from django.contrib.auth import get_user_model

    from documents.models import Collection

    owner, _ = get_user_model().objects.get_or_create(username=OWNER)
    Collection.objects.filter(name__startswith=COLLECTION_PREFIX).delete()
    return Collection.objects.create(name=name, owner=owner)


def run_pipeline(paths: list[Path], collection, max_seconds: float, inner_batch: int | None = None) -> dict:
    """``do_ingest_file`` for each file; time spent inside ``embedding.encode`` is recorded. With
    ``inner_batch``, ``embedding.encode`` is replaced, in this process only, by the same call with
    ``batch_size=inner_batch`` (a candidate change measured without touching the product)."""
    from documents import embedding
    from documents.actions import do_ingest_file

    original = embedding.encode
    encode_seconds = 0.0

    def candidate(texts):
        vectors = embedding.get_model().encode(
            texts, batch_size=inner_batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.tolist()

    encode = candidate if inner_batch else original

    def timed_encode(texts):
        nonlocal encode_seconds
        started = time.perf_counter()
        try:
            return encode(texts)
        finally:
            encode_seconds += time.perf_counter() - started

    embedding.encode = timed_encode  # only in this process, for the breakdown
    done, failed, started = 0, [], time.perf_counter()
    try:
        for path in paths:
            document = do_ingest_file(path, collection).document
            if document.status != "ready":
                failed.append(f"{path.name}: {document.status} {document.error}")
            done += 1
            if time.perf_counter() - started > max_seconds:
                break
    finally:
        embedding.encode = original
    return {"encode_seconds": encode_seconds, "docs_done": done, "failed": failed}


def stored_texts(collection) -> dict[str, list[str]]:
    from documents.models import Chunk

    out: dict[str, list[str]] = {}
    for path, text in (
        Chunk.objects.filter(document__collection=collection)
        .order_by("document_id", "ordinal")
        .values_list("document__source_path", "text")
    ):
        out.setdefault(Path(path).name, []).append(text)
    return out


# --- ONNX -------------------------------------------------------------------------------------
EXPORT_SCRIPT = r"""
import sys, torch
from transformers import AutoModel
source, target = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(source).eval()

class Encoder(torch.nn.Module):
    # The attention mask is made explicit: traced through transformers' own mask helpers, a
    # padded batch came out wrong (the helpers branch in Python on the mask's values).
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = attention_mask[:, None, None, :].to(hidden.dtype)
        mask = (1.0 - mask) * torch.finfo(hidden.dtype).min
        return self.model.encoder(hidden, attention_mask=mask).last_hidden_state

ids = torch.ones(2, 16, dtype=torch.long)
mask = torch.ones(2, 16, dtype=torch.long)
mask[1, 10:] = 0
axes = {0: "batch", 1: "tokens"}
torch.onnx.export(
    Encoder(model), (ids, mask, torch.zeros_like(ids)), target,
    input_names=["input_ids", "attention_mask", "token_type_ids"],
    output_names=["last_hidden_state"],
    dynamic_axes={n: axes for n in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")},
    opset_version=17, dynamo=False,
)
"""


class OrtEncoder:
    """all-MiniLM-L6-v2 as SentenceTransformer runs it (tokenise, truncate to max_seq_length,
    mean-pool over the mask, normalise), with the transformer in ONNX Runtime."""

    def __init__(self, onnx_path: Path, model_dir: str, max_seq_length: int, batch_size: int):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        # As many threads as torch uses (EMBEDDING_TORCH_THREADS): a like-for-like comparison.
        import torch

        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tokenizer.enable_truncation(max_seq_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.batch_size = batch_size

    def encode(self, texts: list[str]):
        import numpy as np

        # Like SentenceTransformer.encode: longest first, so batches pad little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), 384), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            index = order[start : start + self.batch_size]
            encoded = self.tokenizer.encode_batch([texts[i] for i in index])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            hidden = self.session.run(
                None,
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )[0]
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
            out[index] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


def onnx_setup(args: argparse.Namespace, workdir: Path) -> tuple[OrtEncoder | None, list[str]]:
    """An ONNX encoder if one can be had without installing anything, and notes on what happened."""
    from django.conf import settings

    from documents.embedding import get_model, model_path

    notes = []
    folder = Path(model_path())
    has_export = any(folder.rglob("*.onnx"))
    notes.append(f"model folder {'has' if has_export else 'has no'} ONNX export ({folder})")
    try:
        import optimum.onnxruntime  # noqa: F401

        notes.append("optimum is installed: SentenceTransformer(backend='onnx') could be used")
    except ImportError as exc:
        notes.append(
            f"SentenceTransformer(path, backend='onnx') skipped: it imports optimum.onnxruntime "
            f"({exc}); optimum is not installed in the venv (not installed by this benchmark)"
        )
    if args.onnx_site and Path(args.onnx_site).is_dir():
        sys.path.append(args.onnx_site)  # after the venv: the venv's numpy etc. win
        notes.append(f"extra packages from {args.onnx_site} (appended to sys.path)")
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        notes.append(f"direct ONNX Runtime run skipped: {exc}")
        return None, notes
    notes.append(f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}")
    target = workdir / "minilm.onnx"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [args.onnx_site, os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    export = subprocess.run(
        [sys.executable, "-c", EXPORT_SCRIPT, str(folder), str(target)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if export.returncode != 0 or not target.exists():
        notes.append(f"torch.onnx.export failed: {export.stderr.strip().splitlines()[-1:]}")
        return None, notes
    notes.append(
        f"exported with torch.onnx.export (TorchScript exporter, opset 17, fp32) in "
        f"{time.perf_counter() - started:.0f} s, in a subprocess"
    )
    encoder = OrtEncoder(target, str(folder), get_model().max_seq_length, settings.EMBEDDING_BATCH_SIZE)
    return encoder, notes


# --- report -----------------------------------------------------------------------------------
def print_table(rows: list[tuple[str, list[Phase]]], reference: float) -> None:
    header = f"| {'run':<38} | {'chunks':>6} | {'seconds':>13} | {'chunks/s':>8} | {'/ raw':>5} | {'others cpu%':>11} |"
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    for name, phases in rows:
        seconds = [p.seconds for p in phases]
        rate = statistics.mean(p.rate for p in phases)
        shown = " + ".join(f"{s:.1f}" for s in seconds)
        others = statistics.mean(p.others_percent for p in phases)
        print(
            f"| {name:<38} | {phases[0].chunks:>6} | {shown:>13} | {rate:>8.1f} "
            f"| {rate / reference:>5.2f} | {others:>11.0f} |"
        )


def main() -> int:
    args = parse_args()
    # Stopped with SIGTERM: still remove the temporary folder (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = command_line()
    workdir = Path(tempfile.mkdtemp(prefix="docchat-bench-ingest-"))
    corpus, media = workdir / "corpus", workdir / "media"
    corpus.mkdir()
    media.mkdir()
    try:
        return run(args, command, workdir, corpus, media)
    finally:
        if args.keep_corpus:
            print(f"corpus kept in {corpus}")
            shutil.rmtree(media, ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args, command: str, workdir: Path, corpus: Path, media: Path) -> int:
    print_header(command)
    setup_django(BENCH_DB)
    import torch
    from django.conf import settings

    from documents.embedding import get_model

    settings.MEDIA_ROOT = str(media)  # uploaded copies go to the temporary folder, not the project's var/media

    paths = write_corpus(corpus, args.docs, args.paragraphs, args.seed)
    per_doc = pipeline_texts(paths)
    texts = [t for doc in per_doc for t in doc]
    n = len(texts)
    tokens = [len(get_model().tokenizer(t)["input_ids"]) for t in texts[:500]]
    print(
        f"corpus: {len(paths)} Markdown files, {sum(p.stat().st_size for p in paths) / 1e6:.2f} MB, "
        f"{n} chunks ({n / len(paths):.1f} per document), ~{statistics.mean(tokens):.0f} model tokens "
        f"per chunk (first 500 chunks); CHUNK_TOKENS={settings.CHUNK_TOKENS} "
        f"CHUNK_OVERLAP_TOKENS={settings.CHUNK_OVERLAP_TOKENS} EMBEDDING_BATCH_SIZE={settings.EMBEDDING_BATCH_SIZE}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads "
        f"(EMBEDDING_TORCH_THREADS={getattr(settings, 'EMBEDDING_TORCH_THREADS', 'unset')}); database {BENCH_DB}"
    )

    # Warm-up: model loaded and run, tokenizer cached, one document through the whole pipeline.
    encode_all(texts[:64])
    warm = fresh_collection(f"{COLLECTION_PREFIX}warmup")
    run_pipeline(paths[:1], warm, max_seconds=60)
    collection = fresh_collection(f"{COLLECTION_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}")

    load_line = wait_until_quiet(args.wait_quiet)
    print(load_line, flush=True)
    print(
        "timing (raw, raw per document, [small batches], pipeline, [small batches], raw per document, raw) ...",
        flush=True,
    )
    raw_a = timed("raw, one call", n, lambda: encode_all(texts))
    doc_a = timed("raw, per document", n, lambda: encode_per_document(per_doc))
    small = args.small_batch
    if small:
        small_a = timed(f"raw, per document, batch_size={small}", n, lambda: encode_per_document(per_doc, small))
    pipeline_extra = {}

    def pipeline():
        pipeline_extra.update(run_pipeline(paths, collection, args.max_seconds))

    pipe = timed("pipeline", n, pipeline)
    if small:
        small_b = timed(f"raw, per document, batch_size={small}", n, lambda: encode_per_document(per_doc, small))
    doc_b = timed("raw, per document", n, lambda: encode_per_document(per_doc))
    raw_b = timed("raw, one call", n, lambda: encode_all(texts))
    load_after = f"load after timing: loadavg(1 min) {os.getloadavg()[0]:.2f}"

    # The pipeline's own result: every document ready, the stored chunks are exactly our texts.
    stored = stored_texts(collection)
    done = pipeline_extra["docs_done"]
    pipe.chunks = sum(len(stored.get(p.name, [])) for p in paths[:done])
    identical = all(stored.get(p.name) == texts_ for p, texts_ in zip(paths[:done], per_doc[:done], strict=True))
    problems = pipeline_extra["failed"] + ([] if identical else ["stored chunk texts differ from the raw runs' texts"])
    if done < len(paths):
        problems.append(f"pipeline stopped after {done} of {len(paths)} documents (--max-seconds)")

    candidate_rows = []
    if small:
        print(f"candidate: the pipeline with encode batch_size={small} (patched in this process) ...", flush=True)
        candidate_collection = fresh_collection(f"{COLLECTION_PREFIX}candidate-{time.strftime('%Y%m%d-%H%M%S')}")
        candidate_extra: dict = {}
        candidate = timed(
            f"pipeline, encode batch_size={small}",
            n,
            lambda: candidate_extra.update(
                run_pipeline(paths, candidate_collection, args.max_seconds, inner_batch=small)
            ),
        )
        problems += candidate_extra["failed"]
        candidate.chunks = sum(len(v) for v in stored_texts(candidate_collection).values())
        candidate_rows = [(f"pipeline, encode batch_size={small} (*)", [candidate])]

    onnx_rows, onnx_notes = [], []
    if args.onnx == "auto":
        print("ONNX ...", flush=True)
        encoder, onnx_notes = onnx_setup(args, workdir)
        if encoder is not None:
            encoder.encode(texts[:64])  # warm-up
            ort_a = timed("onnxruntime, one call", n, lambda: encoder.encode(texts) is None)
            ort_b = timed("onnxruntime, one call", n, lambda: encoder.encode(texts) is None)
            sample = texts[:: max(1, n // 256)]
            reference_vectors = get_model().encode(
                sample, batch_size=settings.EMBEDDING_BATCH_SIZE, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )  # fmt: skip
            cosine = (encoder.encode(sample) * reference_vectors).sum(1)
            threads = encoder.session.get_session_options().intra_op_num_threads
            onnx_notes.append(
                f"ONNX vs torch vectors: cosine min {cosine.min():.6f}, mean {cosine.mean():.6f} "
                f"over {len(sample)} chunks; onnxruntime intra-op threads {threads}"
            )
            onnx_rows = [("onnxruntime (direct), one call", [ort_a, ort_b])]

    reference = statistics.mean([raw_a.rate, raw_b.rate])
    print()
    print(load_line)
    print(load_after)
    print()
    print_table(
        [("raw SentenceTransformer, one call", [raw_a, raw_b]),
         ("raw, per document (pipeline batching)", [doc_a, doc_b]),
         *([(f"raw, per document, encode batch_size={small}", [small_a, small_b])] if small else []),
         ("pipeline do_ingest_file", [pipe]),
         *candidate_rows,
         *onnx_rows],
        reference,
    )  # fmt: skip
    if candidate_rows:
        print(
            f"(*) candidate change, not the product: embedding.encode patched in this process to pass "
            f"batch_size={args.small_batch} (the model sorts a document's chunks by length, so batches pad "
            f"less); run after the others, into another fresh collection"
        )
    encode_s = pipeline_extra["encode_seconds"]
    print()
    print(
        f"pipeline / raw (one call) = {pipe.rate / reference:.2f}   (goal >= 0.80); "
        f"pipeline / raw per document = {pipe.rate / statistics.mean([doc_a.rate, doc_b.rate]):.2f}"
    )
    batch = settings.EMBEDDING_BATCH_SIZE
    print(
        f"padding: tokens run through the model / real tokens = {padding_factor([texts], batch, calls_of=len(texts)):.2f} one call, "
        f"{padding_factor(per_doc, batch):.2f} per document"
        + (f", {padding_factor(per_doc, small):.2f} per document with batch_size={small}" if small else "")
    )
    print(
        f"pipeline time: {pipe.seconds:.1f} s = {encode_s:.1f} s in embedding.encode "
        f"({100 * encode_s / pipe.seconds:.0f}%) + {pipe.seconds - encode_s:.1f} s of the rest "
        f"(store file, extract, chunk, statuses, heartbeats, insert, full-text update) "
        f"= {1000 * (pipe.seconds - encode_s) / max(done, 1):.0f} ms per document"
    )
    print(
        "others cpu% = CPU used meanwhile by every other process (Postgres included), "
        "% of one core; the raw runs have no Postgres work, so there it is foreign load"
    )
    for note in onnx_notes:
        print(f"onnx: {note}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
