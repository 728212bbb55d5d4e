from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from documents.actions import do_add_file, do_ingest_files, find_files
from documents.models import Collection, Document


class Command(BaseCommand):
    help = (
        "Ingest files or folders (recursively) into a collection. By default the files are queued "
        "for the background worker (manage.py worker); --now processes them here, as one pipeline, with a progress bar."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", type=Path)
        parser.add_argument("--collection", required=True, help="collection name (created if missing)")
        parser.add_argument(
            "--owner",
            help="owner username for a new collection (default: first superuser)",
        )
        parser.add_argument(
            "--public",
            action="store_true",
            help="make a new collection readable by everyone",
        )
        parser.add_argument(
            "--now",
            action="store_true",
            help="process here and now instead of queueing",
        )

    def handle(self, *args, paths, collection, owner, public, now, **options):
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise CommandError(f"no such file or folder: {', '.join(missing)}")
        target = self._collection(collection, owner, public)
        files = find_files(paths)
        if not files:
            raise CommandError("no ingestible files found")
        if not now:
            for path in files:
                result = do_add_file(path, target)
                state = "queued" if result.created else f"unchanged ({result.document.status})"
                self.stdout.write(f"{state:<10} {path}")
            return
        with tqdm(total=0, desc="embedding", unit="chunk", disable=None, leave=False) as bar:
            results = do_ingest_files(files, target, progress=_Advance(bar))
        failed = sum(self._report(path, result) for path, result in zip(files, results))
        if failed:
            raise CommandError(f"{failed} of {len(files)} file(s) failed")

    def _collection(self, name: str, owner: str | None, public: bool) -> Collection:
        existing = Collection.objects.filter(name=name).first()
        if existing:
            return existing
        users = get_user_model().objects
        user = users.filter(username=owner).first() if owner else users.filter(is_superuser=True).first()
        if user is None:
            raise CommandError("a new collection needs an owner: pass --owner USERNAME (an existing user)")
        return Collection.objects.create(name=name, owner=user, is_public=public)

    def _report(self, path: Path, result) -> int:
        document = result.document
        if not result.created:
            self.stdout.write(f"unchanged  {path} (already ingested as #{document.pk})")
        elif document.status == Document.Status.READY:
            self.stdout.write(self.style.SUCCESS(f"ready      {path}: {document.chunks_total} chunks"))
        else:
            self.stderr.write(self.style.ERROR(f"failed     {path}: {document.error}"))
            return 1
        return 0


class _Advance:
    """Progress over all files: chunks embedded of the chunks found so far."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.done: dict[int, tuple[int, int]] = {}

    def __call__(self, document: Document, done: int, total: int) -> None:
        self.done[document.pk] = (done, total)
        self.bar.total = sum(t for _, t in self.done.values())
        self.bar.n = sum(d for d, _ in self.done.values())
        self.bar.refresh()
