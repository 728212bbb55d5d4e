"""Ingestion of PDF, DOCX and HTML: text, page numbers and sections are kept, and a bad file
fails with one line a person understands, without stopping the files after it."""

import io
import zipfile
from pathlib import Path

import docx
import pytest
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from documents.actions import do_ingest_file
from documents.extract import HTML, extract_sections, mime_for
from documents.models import Chunk, Collection, Document
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

ANIMALS = [
    "Aardvarks dig long burrows with their claws and eat termites at night.",
    "Bison graze on the open prairie and move in large herds across the plains.",
    "Cheetahs sprint faster than any other land animal when they chase gazelles.",
]


@pytest.fixture
def collection(db):
    return Collection.objects.create(name="formats", owner=make_user("alice"))


def make_pdf(pages: list[str]) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def encrypt_pdf(data: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, owner_password="owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Staff handbook", 0)
    document.add_heading("Leave", 1)
    document.add_paragraph("Holiday requests are made two weeks ahead through the HR portal.")
    document.add_heading("Sick leave", 2)
    document.add_paragraph("Call your manager before nine on the first day of illness.")
    table = document.add_table(rows=2, cols=2)
    for (row, col), text in {
        (0, 0): "Kind",
        (0, 1): "Days",
        (1, 0): "Sick",
        (1, 1): "Ten",
    }.items():
        table.cell(row, col).text = text
    document.add_heading("Pay", 1)
    document.add_paragraph("Salaries are paid on the last working day of each month.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


PAGE = b"""<!doctype html>
<html><head><title>Field guide to herons</title>
<style>.secret-style { color: red }</style>
<script>var trackingToken = "SCRIPT-SECRET-42";</script></head>
<body>
<header><a href="/">Birdwatch site logo</a></header>
<nav>Home | About | Contact</nav>
<main>
  <h1>Herons</h1>
  <p>Herons wade in <b>shallow</b> water<br>and spear fish with their bills.</p>
  <h2>Grey heron</h2>
  <p>The grey heron stands still for a long time before it strikes.</p>
  <table><tr><th>Length</th><th>Wingspan</th></tr><tr><td>95 cm</td><td>185 cm</td></tr></table>
  <noscript>Please enable JavaScript</noscript><!-- editor's note: check the wingspan -->
</main>
<footer>Copyright Birdwatch</footer>
</body></html>
"""


def zip_with(member: str, size: int) -> bytes:
    """A zip whose one member inflates to ``size`` bytes of zeros (about 1000:1)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, bytes(size))
    return out.getvalue()


def ingest(tmp_path: Path, collection: Collection, name: str, data: bytes) -> Document:
    path = tmp_path / name
    path.write_bytes(data)
    return do_ingest_file(path, collection).document


def chunks_of(document: Document) -> list[Chunk]:
    return list(Chunk.objects.filter(document=document).order_by("ordinal"))


def test_it_cites_each_pdf_chunk_with_the_page_it_came_from(collection, tmp_path):
    document = ingest(tmp_path, collection, "animals.pdf", make_pdf(ANIMALS))

    assert document.status == "ready", document.error
    assert document.mime == "application/pdf" and document.title == "animals"
    chunks = chunks_of(document)
    assert [c.page for c in chunks] == [1, 2, 3] and document.chunks_total == 3
    for chunk, text in zip(chunks, ANIMALS):
        assert " ".join(chunk.text.split()) == text


def test_it_reads_a_pdf_whose_encryption_needs_no_password(collection, tmp_path):
    document = ingest(tmp_path, collection, "restricted.pdf", encrypt_pdf(make_pdf(ANIMALS[:1]), ""))
    assert document.status == "ready", document.error
    assert "Aardvarks" in chunks_of(document)[0].text


def test_it_splits_a_docx_at_its_headings_and_keeps_its_tables(collection, tmp_path):
    document = ingest(tmp_path, collection, "handbook.docx", make_docx())

    assert document.status == "ready", document.error
    assert document.title == "Staff handbook"
    chunks = chunks_of(document)
    assert [c.section for c in chunks] == [
        "Staff handbook › Leave",
        "Staff handbook › Leave › Sick leave",
        "Staff handbook › Pay",
    ]
    assert "two weeks ahead" in chunks[0].text
    assert "Call your manager" in chunks[1].text and "Kind | Days\n\nSick | Ten" in chunks[1].text
    assert chunks[2].text == "Salaries are paid on the last working day of each month."


def test_it_reads_only_the_content_of_an_html_page(collection, tmp_path):
    document = ingest(tmp_path, collection, "herons.html", PAGE)

    assert document.status == "ready", document.error
    assert document.mime == "text/html" and document.title == "Field guide to herons"
    chunks = chunks_of(document)
    assert [c.section for c in chunks] == ["Herons", "Herons › Grey heron"]
    assert chunks[0].text == "Herons wade in shallow water and spear fish with their bills."
    assert "stands still" in chunks[1].text and "Length | Wingspan\n\n95 cm | 185 cm" in chunks[1].text
    everything = " ".join(c.text for c in chunks)
    dropped_parts = (
        "SCRIPT-SECRET-42",
        "trackingToken",
        "secret-style",
        "JavaScript",
        "editor's note",
    )
    for dropped in (*dropped_parts, "site logo", "Contact", "Copyright"):
        assert dropped not in everything


def test_it_titles_an_html_page_without_a_title_tag_by_its_first_h1():
    page = b"<html><body><article><h2>Intro</h2><p>Welcome.</p><h1>Owls</h1><p>Owls hoot.</p></article></body></html>"
    sections = extract_sections(page, HTML)
    assert sections.title == "Owls"
    assert [s.heading for s in sections] == ["Intro", "Owls"]


def test_it_reads_an_xhtml_page_with_its_xml_declaration_comments_and_nested_markup():
    page = (
        b"<?xml version='1.0' encoding='utf-8'?>\n<html xmlns='http://www.w3.org/1999/xhtml'><head><title>Kettles</title>"
        b"</head><body><h2>Descaling <a href='#'>the</a><span>kettle</span></h2><p>Use caf\xc3\xa9 vinegar<!-- no -->"
        b" monthly,<script>track()</script> then <b>rinse</b> twice.</p><pre>  step 1\n  step 2</pre>"
        + b"<div>" * 3000
        + b"Deep inside.</body></html>"
    )
    sections = extract_sections(page, HTML)
    assert sections.title == "Kettles"
    assert [s.heading for s in sections] == ["Descaling the kettle"]
    assert sections[0].text == "Use café vinegar monthly, then rinse twice.\n\n  step 1\n  step 2\n\nDeep inside."


def test_it_keeps_text_that_stands_outside_any_block_element():
    sections = extract_sections(b"<html><head><title>Memo</title></head>Loose words after the head.", HTML)
    assert [s.text for s in sections] == ["Loose words after the head."]


@pytest.mark.parametrize("declaration", ['<meta charset="windows-1252">', '<meta charset="iso-8859-1">'])
def test_it_reads_an_html_page_in_a_legacy_encoding(declaration):
    text = "Le café de l'école est fermé à midi, déjà. Les élèves mangent à la cantine où le chef prépare des crêpes."
    page = f"<html><head>{declaration}</head><body><p>{text}</p></body></html>".encode("cp1252")
    assert extract_sections(page, HTML)[0].text == text


@pytest.mark.parametrize(
    "name, mime",
    [
        ("a.pdf", "application/pdf"),
        (
            "b.DOCX",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        ("c.html", "text/html"),
        ("d.htm", "text/html"),
    ],
)
def test_it_knows_the_type_of_pdf_docx_and_html_files(name, mime):
    assert mime_for(Path(name)) == mime


def corrupt_pdf() -> bytes:
    data = make_pdf(ANIMALS)
    return data[: len(data) // 2]


def over_limit_docx() -> bytes:
    return zip_with("word/document.xml", 3 * 1024 * 1024)


def absurdly_compressed_docx() -> bytes:
    # Under the default 200 MB total, but 20 MB deflated to about 20 KB.
    return zip_with("word/document.xml", 20 * 1024 * 1024)


@pytest.mark.parametrize(
    "name, make, limits, reason",
    [
        ("half.pdf", corrupt_pdf, {}, "the PDF is corrupt or unreadable"),
        (
            "locked.pdf",
            lambda: encrypt_pdf(make_pdf(ANIMALS), "s3cret"),
            {},
            "the PDF is encrypted",
        ),
        (
            "scan.pdf",
            lambda: make_pdf(["", ""]),
            {},
            "the PDF has no text layer (a scan? run OCR on it first)",
        ),
        (
            "long.pdf",
            lambda: make_pdf(ANIMALS),
            {"MAX_PDF_PAGES": 2},
            "the PDF has 3 pages, more than the limit of 2",
        ),
        (
            "fake.docx",
            lambda: b"this is a text file renamed .docx",
            {},
            "the DOCX is corrupt or unreadable",
        ),
        (
            "other.docx",
            lambda: zip_with("notes.txt", 100),
            {},
            "the DOCX is corrupt or unreadable",
        ),
        (
            "bomb.docx",
            over_limit_docx,
            {"MAX_DOCX_UNCOMPRESSED_BYTES": 1024 * 1024},
            "the DOCX expands to more than 1 MB (zip bomb?)",
        ),
        (
            "dense.docx",
            absurdly_compressed_docx,
            {},
            "the DOCX expands more than 100 times its size (zip bomb?)",
        ),
    ],
)
def test_it_fails_a_bad_file_with_a_reason_and_carries_on(collection, tmp_path, settings, name, make, limits, reason):
    for setting, value in limits.items():
        setattr(settings, setting, value)
    bad = ingest(tmp_path, collection, name, make())
    assert bad.status == "failed"
    assert bad.error == reason
    assert not Chunk.objects.filter(document=bad).exists()

    good = ingest(tmp_path, collection, "next.pdf", make_pdf(ANIMALS[:2]))
    assert good.status == "ready", good.error
    assert [c.page for c in chunks_of(good)] == [1, 2]
