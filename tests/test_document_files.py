"""Stored files leave with their document: deleted with it (one, a bulk delete in the admin, or a
cascade from its collection) and when a new file replaces it, once the transaction commits; a
rolled-back delete keeps its file."""

from pathlib import Path

import pytest
from django.db import transaction

from documents.actions import do_add_document, do_add_file
from documents.models import Collection, Document
from tests.conftest import make_staff

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def library(db) -> Collection:
    return Collection.objects.create(name="library", owner=make_staff("admin"))


def add(collection: Collection, name: str, text: str) -> Document:
    return do_add_document(collection, name, text.encode(), enqueue=False).document


def stored_files(media_root: Path) -> list[Path]:
    return sorted(p for p in media_root.rglob("*") if p.is_file())


def test_it_deletes_the_file_with_its_document(library, media_root):
    document = add(library, "notes.txt", "The kettle is descaled every month.")
    path = Path(document.file.path)
    assert path.is_file()
    document.delete()
    assert not path.exists() and stored_files(media_root) == []


def test_it_deletes_the_files_of_a_bulk_delete_in_the_admin(library, media_root, client):
    documents = [add(library, f"note{i}.txt", f"Note {i} about the boiler.") for i in range(3)]
    client.force_login(library.owner)
    response = client.post(
        "/admin/documents/document/",
        {"action": "delete_selected", "_selected_action": [d.pk for d in documents[:2]], "post": "yes"},
    )
    assert response.status_code == 302
    assert stored_files(media_root) == [Path(documents[2].file.path)]


def test_it_deletes_the_files_of_a_deleted_collection(library, media_root):
    for i in range(2):
        add(library, f"note{i}.txt", f"Note {i} about the boiler.")
    other = Collection.objects.create(name="other", owner=library.owner)
    kept = add(other, "kept.txt", "This one stays.")
    library.delete()
    assert stored_files(media_root) == [Path(kept.file.path)]


def test_it_deletes_the_old_file_when_a_new_one_replaces_it(library, media_root, tmp_path):
    source = tmp_path / "policy.md"
    source.write_text("# Policy\n\nBicycles are parked in the basement.")
    first = do_add_file(source, library, enqueue=False).document
    old = Path(first.file.path)
    source.write_text("# Policy\n\nBicycles are parked in the courtyard.")
    second = do_add_file(source, library, enqueue=False).document
    assert second.pk == first.pk
    assert not old.exists()
    assert stored_files(media_root) == [Path(second.file.path)]
    assert Path(second.file.path).read_text() == source.read_text()


def test_it_keeps_the_file_when_the_delete_is_rolled_back(library, media_root):
    document = add(library, "notes.txt", "The kettle is descaled every month.")
    path = Path(document.file.path)

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        Document.objects.filter(pk=document.pk).delete()
        raise Abort
    assert path.is_file() and Document.objects.filter(pk=document.pk).exists()
