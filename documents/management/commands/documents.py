from __future__ import annotations

from django.core.management.base import BaseCommand

from documents.models import Document


class Command(BaseCommand):
    help = "Status table of documents: collection, status, progress, size, error."

    def add_arguments(self, parser):
        parser.add_argument("--collection", help="only this collection")
        parser.add_argument(
            "--status",
            choices=[s.value for s in Document.Status],
            help="only this status",
        )

    def handle(self, *args, collection, status, **options):
        documents = Document.objects.select_related("collection").order_by("collection__name", "title")
        if collection:
            documents = documents.filter(collection__name=collection)
        if status:
            documents = documents.filter(status=status)
        self.stdout.write(f"{'id':>5}  {'collection':<20} {'status':<10} {'chunks':>11}  {'size':>9}  title / error")
        for d in documents:
            progress = f"{d.chunks_done}/{d.chunks_total}"
            line = f"{d.pk:>5}  {d.collection.name[:20]:<20} {d.status:<10} {progress:>11}  {d.size_bytes:>9}  {d.title[:50]}"
            self.stdout.write(line + (f"  — {d.error}" if d.error else ""))
        self.stdout.write(f"{documents.count()} document(s)")
