"""YugabyteDB: YugabyteDBChatStore through the smart driver, on PostgreSQL with its SQL shims."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

from llama_index.storage.chat_store.bench import Backend, service
from llama_index.storage.chat_store.postgres.testing import start_postgres
from llama_index.storage.chat_store.yugabytedb import YugabyteDBChatStore
from llama_index.storage.chat_store.yugabytedb.testing import install_yugabytedb_shims


@contextmanager
def yugabytedb() -> Iterator[str]:
    """Yield ``CHAT_STORE_TEST_YUGABYTEDB_URL``, else a shimmed database on a local PostgreSQL."""
    url = os.environ.get("CHAT_STORE_TEST_YUGABYTEDB_URL")
    if url:
        yield url
        return
    with service(
        "CHAT_STORE_TEST_POSTGRES_URL",
        start_postgres,
        lambda s: f"postgresql://test@127.0.0.1:{s.port}/postgres",
    ) as postgres:
        database = install_yugabytedb_shims(postgres, f"yugabyte_{uuid4().hex[:8]}")
        parts = urlsplit(database)
        yield urlunsplit(parts._replace(scheme="yugabytedb+psycopg2", query="load_balance=true"))


BENCH = Backend(
    title="YugabyteDBChatStore (psycopg2-yugabytedb, load_balance=true; PostgreSQL 15 with "
    "YugabyteDB's SQL shims)",
    server=yugabytedb,
    ours=lambda url: YugabyteDBChatStore.from_uri(url, schema_name=f"bench_{uuid4().hex[:8]}"),
    raw=None,
    reference=None,
    notes=[
        "No YugabyteDB server installs here: a database on a local PostgreSQL answers "
        "yb_servers() and version() like YugabyteDB (tests-shared), so the smart driver runs "
        "its load-balancing path; a real cluster adds its own replication costs to every "
        "implementation alike.",
        "The Postgres store's rows (postgres.md) show the floor and LlamaIndex's store for "
        "the same SQL; these rows exist to compare revisions (--baseline).",
    ],
)
