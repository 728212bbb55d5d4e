from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from documents.embedding import encode
from documents.search import search, snippet


class Command(BaseCommand):
    help = "Hybrid search (vector + full text) as USER would see it; prints ranked chunks with scores."

    def add_arguments(self, parser):
        parser.add_argument("query")
        parser.add_argument("--user", required=True)
        parser.add_argument("-k", type=int, default=5)

    def handle(self, *args, query, user, k, **options):
        account = get_user_model().objects.filter(username=user).first()
        if account is None:
            raise CommandError(f"no user named {user!r}")
        hits = search(account, query, encode([query])[0], k)
        if not hits:
            self.stdout.write("no results (nothing readable matches)")
        for n, hit in enumerate(hits, start=1):
            where = ", ".join(
                x
                for x in (
                    hit.title,
                    f"page {hit.page}" if hit.page else "",
                    hit.section,
                )
                if x
            )
            self.stdout.write(f"[{n}] score={hit.score:.4f} similarity={hit.similarity:.3f}  {where}")
            self.stdout.write(f"     {snippet(hit.text)}")
