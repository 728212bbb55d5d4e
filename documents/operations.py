"""Migration operation that creates the pgvector extension, or says clearly that it is missing."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from pgvector.django import VectorExtension


class EnsureVectorExtension(VectorExtension):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            available = cursor.fetchone() is not None
        if not available:
            raise ImproperlyConfigured(
                "The PostgreSQL server has no pgvector extension ('vector'), which this product needs. "
                "Install pgvector on that server (e.g. the pgvector/pgvector image), or unset "
                "DATABASE_URL to use the embedded PostgreSQL that ships with it."
            )
        super().database_forwards(app_label, schema_editor, from_state, to_state)
