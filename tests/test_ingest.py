"""Ingestion of text and Markdown: chunks with sections, idempotence, clear failures."""

import pytest
from django.core.management import call_command

from documents.actions import do_ingest_file
from documents.chunking import chunk_sections
from documents.embedding import count_tokens
from documents.extract import Section, markdown_sections
from documents.models import Chunk, Collection, Document
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def collection(db):
    return Collection.objects.create(name="library", owner=make_user("alice"))


def long_markdown(paragraphs: int) -> str:
    body = "\n\n".join(
        f"Paragraph {i} explains the topic number {i} in some detail, with several sentences. "
        f"It continues so that the chunker has real text to pack. The end of paragraph {i}."
        for i in range(paragraphs)
    )
    return f"# Guide\n\nIntro text.\n\n## Details\n\n{body}\n"


def test_it_chunks_markdown_by_section_with_bounded_overlapping_chunks(collection, tmp_path, settings):
    path = tmp_path / "guide.md"
    path.write_text(long_markdown(40))
    result = do_ingest_file(path, collection)

    document = result.document
    assert document.status == "ready" and document.title == "Guide"
    chunks = list(Chunk.objects.filter(document=document).order_by("ordinal"))
    assert document.chunks_total == len(chunks) == document.chunks_done > 3
    assert chunks[0].section == "Guide" and chunks[-1].section == "Guide › Details"
    assert all(c.token_count <= settings.CHUNK_TOKENS for c in chunks)
    # consecutive chunks of a section overlap: the last sentence of one opens the next
    assert chunks[2].text.split("\n\n")[0] in chunks[1].text
    assert all(c.search_vector for c in chunks)


def test_it_does_nothing_when_the_same_file_is_ingested_again(collection, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Some notes about the quarterly planning meeting and its outcomes.")
    first = do_ingest_file(path, collection)
    again = do_ingest_file(path, collection)
    assert first.created and not again.created
    assert again.document.pk == first.document.pk
    assert Document.objects.count() == 1 and Chunk.objects.count() == 1


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("empty.txt", b"", "the file is empty"),
        ("blank.md", b"   \n\n  ", "the file is empty"),
        ("binary.txt", bytes(range(256)) * 40, "the file looks binary, not text"),
        ("slides.pptx", b"PK\x03\x04 not supported", "unsupported file type .pptx"),
    ],
)
def test_it_marks_a_bad_file_failed_with_a_reason(collection, tmp_path, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data)
    document = do_ingest_file(path, collection).document
    assert document.status == "failed"
    assert document.error.startswith(reason)
    assert not Chunk.objects.filter(document=document).exists()


def test_it_reads_text_in_a_legacy_encoding(collection, tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("Le café de l'école est fermé à midi. Déjà vu, naïve façade.".encode("latin-1"))
    document = do_ingest_file(path, collection).document
    assert document.status == "ready"
    assert "café" in Chunk.objects.get(document=document).text


def test_it_keeps_headings_out_of_code_fences():
    sections = markdown_sections("# A\n\ntext\n\n```\n# not a heading\n```\n\n## B\n\nmore")
    assert [s.heading for s in sections] == ["A", "A › B"]
    assert "# not a heading" in sections[0].text


def test_it_splits_a_paragraph_longer_than_a_chunk():
    text = " ".join(f"word{i}" for i in range(1000))
    drafts = chunk_sections([Section("", text)], max_tokens=100, overlap_tokens=0, count_tokens=count_tokens)
    assert len(drafts) > 5
    assert all(d.token_count <= 100 for d in drafts)
    assert " ".join(d.text for d in drafts).split() == text.split()


def test_the_ingest_command_reports_ready_failed_and_unchanged(collection, tmp_path, capsys):
    (tmp_path / "a.md").write_text("# Alpha\n\nAlpha is the first letter of the Greek alphabet.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("Beta follows alpha in the Greek alphabet.")
    call_command("ingest", str(tmp_path), "--collection", "library", "--now")
    call_command("ingest", str(tmp_path), "--collection", "library", "--now")
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("ready ") for line in lines) == 2
    assert sum(line.startswith("unchanged ") for line in lines) == 2
    assert Document.objects.filter(status="ready").count() == 2


def test_it_replaces_the_chunks_of_a_file_that_changed(collection, tmp_path):
    path = tmp_path / "policy.md"
    path.write_text("# Policy\n\nThe old rule says bicycles are parked in the basement.")
    first = do_ingest_file(path, collection).document
    path.write_text("# Policy\n\nThe new rule says bicycles are parked in the courtyard.")
    second = do_ingest_file(path, collection).document
    assert second.pk == first.pk and second.status == "ready"
    texts = list(Chunk.objects.filter(document=second).values_list("text", flat=True))
    assert texts == ["The new rule says bicycles are parked in the courtyard."]
    assert Document.objects.count() == 1


def test_it_embeds_chunks_of_several_documents_together_and_keeps_every_heartbeat(collection, settings, monkeypatch):
    import math

    from documents import embedding
    from documents.actions import do_add_document
    from documents.ingest import do_process_documents

    settings.INGEST_ENCODE_CHUNKS = 4
    long = do_add_document(collection, "long.md", long_markdown(400).encode(), enqueue=False).document
    notes = [
        do_add_document(
            collection, f"note{i}.md", f"# Note {i}\n\nKettle {i} is descaled monthly.".encode(), enqueue=False
        ).document
        for i in range(3)
    ]
    calls, heartbeats = [], []
    encode = embedding.encode
    monkeypatch.setattr(embedding, "encode", lambda texts: calls.append(len(texts)) or encode(texts))

    def progress(document, done, total):
        if document.pk == long.pk and done < total:
            heartbeats.append(Document.objects.get(pk=notes[0].pk).updated_at)

    stats = do_process_documents([long.pk, *(n.pk for n in notes)], progress)

    long.refresh_from_db()
    assert stats.documents == 4 and Document.objects.filter(status="ready").count() == 4
    # The notes waiting behind the long document's chunks were kept alive all along.
    assert len(heartbeats) > 10 and len(set(heartbeats)) > len(heartbeats) // 2
    # The notes' chunks rode in the long document's calls instead of one call each.
    assert sum(calls) == long.chunks_total + 3
    assert len(calls) < math.ceil(long.chunks_total / 4) + 3
