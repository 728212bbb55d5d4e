from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from documents.actions import do_ingest_file, find_files
from documents.models import Collection

DEMO_COLLECTION = "DocChat handbook"


class Command(BaseCommand):
    help = "Create the demo user and the demo collection from docs/ (idempotent: safe to run again)."

    def handle(self, *args, **options):
        if settings.DEMO_PASSWORD:
            check_demo_password(settings.DEMO_USERNAME, settings.DEMO_PASSWORD)
        user = self._demo_user()
        collection, _ = Collection.objects.get_or_create(
            name=DEMO_COLLECTION,
            defaults={
                "owner": user,
                "is_public": True,
                "description": "How DocChat works, configured and run.",
            },
        )
        for path in find_files([settings.DEMO_DOCS_DIR]):
            result = do_ingest_file(path, collection)
            if result.created:
                self.stdout.write(f"ingested {path.name}: {result.document.status}")

    def _demo_user(self):
        users = get_user_model().objects
        user = users.filter(username=settings.DEMO_USERNAME).first()
        if user is not None:
            if settings.DEMO_PASSWORD and not user.check_password(settings.DEMO_PASSWORD):
                user.set_password(settings.DEMO_PASSWORD)
                user.save()
            return user
        password = settings.DEMO_PASSWORD or secrets.token_urlsafe(12)
        user = users.create_superuser(settings.DEMO_USERNAME, email="", password=password)
        shown = "from DEMO_PASSWORD" if settings.DEMO_PASSWORD else password
        self.stdout.write(
            self.style.WARNING(
                f"Demo user created: {settings.DEMO_USERNAME} / {shown}  (shown once; it is an admin too)"
            )
        )
        return user


def check_demo_password(username: str, password: str) -> None:
    """The demo user is an administrator: its password passes the same validators as anyone's."""
    try:
        validate_password(password, get_user_model()(username=username))
    except ValidationError as exc:
        raise CommandError(f"DEMO_PASSWORD is not accepted: {' '.join(exc.messages)}") from None
