from __future__ import annotations

import hashlib
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand

from documents.ingest import do_process_document, do_requeue
from documents.models import Document


class Command(BaseCommand):
    help = (
        "Extract, chunk and embed documents again (queued for the worker, or --now). With --changed, "
        "only documents whose source file on disk changed since ingestion; their file is replaced."
    )

    def add_arguments(self, parser):
        parser.add_argument("--changed", action="store_true")
        parser.add_argument("--collection", help="only this collection")
        parser.add_argument(
            "--now",
            action="store_true",
            help="process here and now instead of queueing",
        )

    def handle(self, *args, changed, collection, now, **options):
        documents = Document.objects.exclude(status__in=[Document.Status.PENDING])
        if collection:
            documents = documents.filter(collection__name=collection)
        count = 0
        for document in documents:
            if changed and not self._refresh_changed_file(document):
                continue
            do_requeue(document, enqueue=not now)
            if now:
                do_process_document(document.pk)
                document.refresh_from_db()
            self.stdout.write(f"{'reindexed' if now else 'queued':<10} {document.title} ({document.status})")
            count += 1
        self.stdout.write(f"{count} document(s)")

    def _refresh_changed_file(self, document: Document) -> bool:
        source = Path(document.source_path) if document.source_path else None
        if source is None or not source.is_file():
            return False
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest == document.sha256:
            return False
        document.sha256, document.size_bytes = digest, len(data)
        document.file.save(source.name, ContentFile(data), save=True)
        return True
