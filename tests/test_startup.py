"""Importing settings or the ASGI app must not connect to the database or start a server."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import sys
import config.settings
import config.asgi
from django.db import connections
import embedded_pg.server as server
assert server.current_server() is None, 'embedded server started at import'
assert all(c.connection is None for c in connections.all()), 'a connection was opened at import'
from django.db.backends.postgresql.base import DatabaseWrapper
assert not DatabaseWrapper._connection_pools, 'a pool was created at import'
print('clean')
"""


def test_it_opens_no_connection_and_starts_no_server_at_import(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DOCCHAT_VAR_DIR": str(tmp_path / "var"),
    }
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "clean"
    assert not (tmp_path / "var" / "pg").exists()
