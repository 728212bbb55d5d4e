"""A user's own documents, added from the chat page, and what deleting them needs of the pipeline."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from documents.actions import do_add_document
from documents.ingest import do_process_documents
from documents.models import Chunk, Collection, Document
from tests.conftest import make_user

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def alice(transactional_db):
    return make_user("alice")


async def test_a_document_deleted_while_it_is_extracted_stays_deleted(alice):
    """The bug: the pipeline saved its copy of the document after extraction, and ``save()`` of a
    deleted row inserts it again — the deleted document came back, ready, with its file gone."""
    await database_sync_to_async(_delete_while_extracting)(alice)


def _delete_while_extracting(alice) -> None:
    collection = Collection.objects.create(name="alice-notes", owner=alice)
    first = do_add_document(collection, "a.md", b"# A\n\nAlpha is first.", enqueue=False).document
    doomed = do_add_document(collection, "b.md", b"# B\n\nBeta is second.", enqueue=False).document

    deleted: list[int] = []

    def more(limit: int) -> list[int]:
        # First asked once the first document is extracted, while the second is in flight.
        if not deleted:
            deleted.append(Document.objects.filter(pk=doomed.pk).delete()[0])
        return []

    do_process_documents([first.pk, doomed.pk], more=more)
    assert deleted == [1]
    assert not Document.objects.filter(pk=doomed.pk).exists()
    assert not Chunk.objects.filter(document_id=doomed.pk).exists()
    assert Document.objects.get(pk=first.pk).status == "ready"
