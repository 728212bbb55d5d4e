from __future__ import annotations

from django.core.management.base import BaseCommand

from documents import embedding
from documents.actions import do_refresh_from_source, do_requeue
from documents.ingest import do_process_documents
from documents.models import Document


class Command(BaseCommand):
    help = (
        "Extract, chunk and embed documents again (queued for the worker, or --now). With --changed, "
        "only documents whose source file on disk changed since ingestion; their file is replaced. With "
        "--engine-changed, only documents embedded by another engine than EMBEDDING_ENGINE."
    )

    def add_arguments(self, parser):
        parser.add_argument("--changed", action="store_true")
        parser.add_argument("--engine-changed", action="store_true", help="only documents another engine embedded")
        parser.add_argument("--collection", help="only this collection")
        parser.add_argument("--now", action="store_true", help="process here and now instead of queueing")

    def handle(self, *args, changed, engine_changed, collection, now, **options):
        documents = Document.objects.exclude(status=Document.Status.PENDING)
        if engine_changed:
            documents = documents.filter(status=Document.Status.READY).exclude(embedded_with=embedding.engine_id())
        if collection:
            documents = documents.filter(collection__name=collection)
        chosen = []
        for document in documents:
            if changed:
                if not do_refresh_from_source(document, enqueue=not now):
                    continue
            else:
                do_requeue(document, enqueue=not now)
            chosen.append(document)
        if now:
            do_process_documents([document.pk for document in chosen])
        for document in chosen:
            document.refresh_from_db()
            self.stdout.write(f"{'reindexed' if now else 'queued':<10} {document.title} ({document.status})")
        self.stdout.write(f"{len(chosen)} document(s)")
