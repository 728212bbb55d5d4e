"""Stored files go with their document.

A document's file is deleted from storage when the document is deleted (one, a queryset in the
admin, or a cascade from its collection: Django sends ``post_delete`` for each of them) and when a
new file replaces it. Deleting waits until the transaction commits: a delete that is rolled back
keeps its file, and a file is never deleted while a row still names it.
"""

from __future__ import annotations

import logging
from functools import partial

from django.core.files.storage import Storage
from django.db import transaction
from django.db.models.fields.files import FieldFile
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import Document

logger = logging.getLogger(__name__)


def delete_on_commit(file: FieldFile, using: str | None = None) -> None:
    """Delete ``file`` (as it names a stored file now) once the current transaction commits, at
    once outside one. A later ``file.save()`` does not change which file goes."""
    if file.name:
        # robust: a storage error is logged, not raised into the code that committed.
        transaction.on_commit(partial(_delete, file.storage, file.name), using=using, robust=True)


def _delete(storage: Storage, name: str) -> None:
    storage.delete(name)
    logger.info("deleted stored file %s", name)


@receiver(post_delete, sender=Document, dispatch_uid="documents.files.document_deleted")
def _document_deleted(sender, instance: Document, using: str, **kwargs) -> None:
    delete_on_commit(instance.file, using)
