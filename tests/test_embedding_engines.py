"""Embedding engines: the ONNX int8 engine stands in for PyTorch, and switching engines loses nothing."""

from __future__ import annotations

import importlib
import pydoc
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.management import call_command

from documents import embedding, engines
from documents.actions import do_ingest_file
from documents.chunking import chunk_sections
from documents.extract import markdown_sections
from documents.models import Chunk, Collection, Document
from documents.search import vector_search
from tests.conftest import make_user

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("json", "functools", "collections", "pathlib", "shutil", "subprocess")


def real_chunks() -> list[str]:
    """Chunk texts of real technical prose: the project's docs and some standard-library pydoc."""
    texts = [p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))]
    texts += [pydoc.render_doc(importlib.import_module(m), renderer=pydoc.plaintext) for m in MODULES]
    chunks = []
    for text in texts:
        drafts = chunk_sections(
            markdown_sections(text), max_tokens=200, overlap_tokens=40, count_tokens=embedding.count_tokens
        )
        chunks += [d.text for d in drafts]
    return chunks


@pytest.fixture(scope="module")
def torch_engine():
    return engines.load("torch", 2, settings.EMBEDDING_CACHE_DIR)


@pytest.fixture(scope="module")
def reference(torch_engine):
    """Real chunk texts and their PyTorch vectors."""
    texts = real_chunks()
    return texts, torch_engine.encode(texts, 32)


def test_it_embeds_like_pytorch_with_the_int8_onnx_engine(reference):
    texts, torch_vectors = reference
    assert len(texts) > 300
    int8 = engines.load("onnx-int8", 2, settings.EMBEDDING_CACHE_DIR)
    fp32 = engines.load("onnx", 2, settings.EMBEDDING_CACHE_DIR)

    quantised = engines.check_equivalence(int8, texts, torch_vectors)
    exact = engines.check_equivalence(fp32, texts, torch_vectors)

    assert quantised.mean_cosine >= 0.98 and quantised.min_cosine >= 0.95, quantised
    assert exact.min_cosine >= 0.9999, exact  # same graph in fp32: float rounding only
    # Normalised, like the vectors already stored: cosine distance stays comparable.
    norms = np.linalg.norm(int8.encode(texts[:20], 8), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-3)


def test_it_finds_the_same_passages_whichever_engine_embedded_them(torch_engine, reference):
    texts, stored_torch = reference
    int8 = engines.load("onnx-int8", 2, settings.EMBEDDING_CACHE_DIR)
    # Questions are the first sentence of a passage; the passage must be among the top 5.
    questions = [t.split(". ")[0] for t in texts[::7] if len(t.split(". ")[0]) > 40]
    answers = [texts.index(t) for t in texts[::7] if len(t.split(". ")[0]) > 40]
    stored_int8 = int8.encode(texts, 32)

    def hits(stored, engine) -> float:
        ranked = np.argsort(-(engine.encode(questions, 32) @ stored.T), axis=1)[:, :5]
        return float(np.mean([a in row for a, row in zip(answers, ranked)]))

    reference = hits(stored_torch, torch_engine)
    assert reference > 0.8
    assert abs(hits(stored_int8, int8) - reference) <= 0.02  # a new index
    assert abs(hits(stored_torch, int8) - reference) <= 0.02  # old vectors, new questions


@pytest.fixture
def engine_named(monkeypatch, settings):
    """Switch the process's engine (as a restart with another EMBEDDING_ENGINE would)."""

    def switch(name: str) -> None:
        settings.EMBEDDING_ENGINE = name
        monkeypatch.setattr(embedding, "_engine", None)

    return switch


@pytest.mark.django_db
def test_it_reindexes_only_what_another_engine_embedded(engine_named, tmp_path):
    library = Collection.objects.create(name="library", owner=make_user("alice"))
    (tmp_path / "old.md").write_text("# Lighthouse\n\nThe Kestrel Point lighthouse was built in 1874 from granite.")
    (tmp_path / "new.md").write_text("# Bakery\n\nThe Millstone bakery feeds its sourdough starter twice a day.")
    engine_named("torch")
    old = do_ingest_file(tmp_path / "old.md", library).document
    engine_named("onnx-int8")
    new = do_ingest_file(tmp_path / "new.md", library).document
    assert (old.embedded_with, new.embedded_with) == ("all-MiniLM-L6-v2/torch", "all-MiniLM-L6-v2/onnx-int8")

    # Mixed vectors: the torch-embedded passage is still found by an int8-embedded question.
    question = embedding.encode(["When was the lighthouse built?"])[0]
    assert vector_search(library.owner, question, 1)[0].document_id == old.pk

    old_vector = Chunk.objects.get(document=old).embedding
    new_vector = Chunk.objects.get(document=new).embedding
    call_command("reindex", "--engine-changed", "--now")

    old.refresh_from_db(), new.refresh_from_db()
    assert old.embedded_with == new.embedded_with == "all-MiniLM-L6-v2/onnx-int8"
    assert old.status == Document.Status.READY
    assert not np.array_equal(Chunk.objects.get(document=old).embedding, old_vector)  # re-embedded
    assert np.array_equal(Chunk.objects.get(document=new).embedding, new_vector)  # left alone


def test_it_falls_back_to_pytorch_when_onnx_cannot_load(engine_named, settings, tmp_path, caplog):
    engine_named("onnx-int8")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    settings.EMBEDDING_CACHE_DIR = blocked

    assert embedding.engine_id() == "all-MiniLM-L6-v2/torch"
    assert "embedding engine onnx-int8 cannot load; PyTorch serves instead" in caplog.text
    assert len(embedding.encode(["still works"])[0]) == 384
