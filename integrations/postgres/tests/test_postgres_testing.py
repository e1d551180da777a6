"""The test server of ``postgres.testing``: a real PostgreSQL that accepts connections."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit

from llama_index.storage.chat_store.postgres.testing import postgres_bindir


def test_postgres_url_accepts_connections(postgres_url: str) -> None:
    bindir = postgres_bindir()
    assert bindir is not None
    parts = urlsplit(postgres_url)
    probe = subprocess.run(
        [str(bindir / "pg_isready"), "-h", str(parts.hostname), "-p", str(parts.port)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stdout
