"""``ENGINE: "embedded_pg"``: Django's PostgreSQL backend plus a lazily started embedded server."""

from __future__ import annotations

from django.db.backends.postgresql.base import (
    DatabaseWrapper as PostgresDatabaseWrapper,
)

from .server import ensure_running


class DatabaseWrapper(PostgresDatabaseWrapper):
    def get_connection_params(self):
        # The socket folder is only known once the server runs; it is written into the settings
        # so every later connection (the pool's too) finds it.
        self.settings_dict["HOST"] = ensure_running(self.settings_dict["EMBEDDED_PGDATA"], self._database_to_create())
        return super().get_connection_params()

    def _database_to_create(self) -> str:
        # Test databases are created by Django itself, through the 'postgres' database.
        name = self.settings_dict["NAME"] or "postgres"
        return "postgres" if name.startswith("test_") else name
