"""YugabyteDB for the tests: PostgreSQL plus the two SQL shims YugabyteDB's clients need.

No YugabyteDB server installs here, so a database on the session's PostgreSQL stands in:

* ``yb_servers()`` describes the local server as the only tablet server, so the smart driver
  (``psycopg2-yugabytedb``) with ``load_balance=true`` really runs its load-balancing path
  (each call advances the sequence ``public.yb_servers_calls``, which, unlike a row, survives
  the driver rolling back its control connection);
* ``public.version()`` answers like YugabyteDB (``...-YB-2.25.0.0-b0``), first on the
  database's ``search_path``, for the ``sqlalchemy-yugabytedb`` dialect's version check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from llama_index.storage.chat_store.postgres.testing import postgres_bindir

ENV_VAR = "CHAT_STORE_TEST_YUGABYTEDB_URL"


def _psql() -> str:
    bindir = postgres_bindir()
    candidate = bindir / "psql" if bindir else None
    found = str(candidate) if candidate and candidate.exists() else shutil.which("psql")
    if not found:
        pytest.fail("psql not found: install the PostgreSQL client (apt-get install postgresql)")
    return found


def _run_sql(url: str, sql: str) -> None:
    done = subprocess.run(  # noqa: S603 (our own psql and SQL)
        [_psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url],
        input=sql, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"psql failed on {url}: {done.stderr[-1500:]}")


def install_yugabytedb_shims(postgres_url: str, database: str) -> str:
    """Create ``database`` on a PostgreSQL server, make it answer like YugabyteDB.

    Returns:
        The libpq URL of the new database.
    """
    parts = urlsplit(postgres_url)
    _run_sql(postgres_url, f'CREATE DATABASE "{database}"')
    url = urlunsplit(parts._replace(path=f"/{database}"))
    port = parts.port or 5432
    _run_sql(
        url,
        f"""
        CREATE SEQUENCE public.yb_servers_calls;
        CREATE FUNCTION public.yb_servers() RETURNS TABLE (host text, port bigint,
            num_connections int, node_type text, cloud text, region text, zone text,
            public_ip text, uuid text)
        LANGUAGE sql VOLATILE AS $$
            SELECT '{parts.hostname}'::text, {port}::bigint, 0, 'primary'::text,
                   'cloud1'::text, 'datacenter1'::text, 'rack1'::text,
                   '{parts.hostname}'::text, 'yb-shim-1'::text
            WHERE nextval('public.yb_servers_calls') > 0;
        $$;
        CREATE FUNCTION public.version() RETURNS text LANGUAGE sql STABLE AS $$
            SELECT 'PostgreSQL 15.0-YB-2.25.0.0-b0 on x86_64-pc-linux-gnu (shim)'::text
        $$;
        ALTER DATABASE "{database}" SET search_path = public, pg_catalog;
        """,
    )
    return url


@pytest.fixture(scope="session")
def yugabytedb_url(postgres_url: str) -> Iterator[str]:
    """A ``yugabytedb+psycopg2://...?load_balance=true`` URL for this test session.

    ``CHAT_STORE_TEST_YUGABYTEDB_URL`` points at a real YugabyteDB; otherwise a database on
    the session's PostgreSQL with the shims above stands in.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        yield env
        return
    database = f"yugabyte_{uuid.uuid4().hex[:8]}"
    url = install_yugabytedb_shims(postgres_url, database)
    parts = urlsplit(url)
    yield urlunsplit(parts._replace(scheme="yugabytedb+psycopg2", query="load_balance=true"))
    _run_sql(postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
