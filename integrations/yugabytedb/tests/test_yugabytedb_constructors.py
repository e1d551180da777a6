"""LlamaIndex's YugabyteDBChatStore constructor forms build working stores (smart driver).

LlamaIndex's forms: ``YugabyteDBChatStore(session, table_name, schema_name, use_jsonb)`` with
a SQLAlchemy sessionmaker, ``from_uri(uri, table_name, schema_name, debug, use_jsonb)`` and
``from_params(host, port, database, user, password, load_balance, topology_keys,
yb_servers_refresh_interval, fallback_to_topology_keys_only, failed_host_ttl_seconds,
table_name, schema_name, connection_string, debug, use_jsonb)``. Each form writes a message
and reads it back (sync and async); an argument no store knows raises, naming it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from llama_index.storage.chat_store.postgres.testing import round_trip_sync_and_async
from llama_index.storage.chat_store.yugabytedb import YugabyteDBChatStore


def _schema() -> str:
    return f"s_{uuid.uuid4().hex[:12]}"


def test_sessionmaker_positionally(yugabytedb_url: str) -> None:
    """YugabyteDBChatStore(session, table_name, schema_name, use_jsonb), as in LlamaIndex.

    If this fails: __init__'s positional parameters drifted from LlamaIndex's order (it
    differs from Postgres's: no async_session), or the session's engine is not used.
    """
    engine = create_engine(yugabytedb_url)
    schema = _schema()
    store = YugabyteDBChatStore(sessionmaker(engine), "chatstore", schema, True)
    assert (store.table_name, store.schema_name, store.use_jsonb) == ("chatstore", schema, True)
    round_trip_sync_and_async(store)
    assert engine.pool.checkedin() >= 1  # the store used (and returned) the caller's pool
    engine.dispose()


def test_from_uri_positionally(yugabytedb_url: str) -> None:
    """from_uri(uri, table_name, schema_name, debug, use_jsonb), LlamaIndex's order.

    If this fails: from_uri's positional parameters drifted from LlamaIndex's order.
    """
    schema = _schema()
    store = YugabyteDBChatStore.from_uri(yugabytedb_url, "chats", schema, False, False)
    assert (store.table_name, store.schema_name) == ("chats", schema)
    round_trip_sync_and_async(store)


def test_from_params_positionally(yugabytedb_url: str) -> None:
    """from_params with every LlamaIndex parameter by position, smart-driver options too.

    If this fails: from_params' positional parameters drifted from LlamaIndex's order.
    """
    url = urlsplit(yugabytedb_url)
    schema = _schema()
    store = YugabyteDBChatStore.from_params(
        url.hostname, url.port, url.path.lstrip("/"), url.username, url.password, True, None,
        60, False, 5, "chats", schema, None, False, False,
    )  # fmt: skip
    assert "load_balance=true" in store.connection_string
    assert "yb_servers_refresh_interval=60" in store.connection_string
    assert (store.table_name, store.schema_name) == ("chats", schema)
    round_trip_sync_and_async(store)


def test_from_params_connection_string(yugabytedb_url: str) -> None:
    """from_params(connection_string=...) uses that URL, as in LlamaIndex.

    If this fails: connection_string is ignored or rejected.
    """
    store = YugabyteDBChatStore.from_params(connection_string=yugabytedb_url, schema_name=_schema())
    round_trip_sync_and_async(store)


def test_base_module_exports_the_store() -> None:
    """LlamaIndex's documented import path works.

    If this fails: yugabytedb/base.py is missing or re-exports something else.
    """
    from llama_index.storage.chat_store.yugabytedb.base import YugabyteDBChatStore as FromBase

    assert FromBase is YugabyteDBChatStore


@pytest.mark.parametrize(
    "build",
    [
        lambda url: YugabyteDBChatStore(sessionmaker(create_engine(url)), tll=300),
        lambda url: YugabyteDBChatStore.from_uri(url, tll=300),
        lambda url: YugabyteDBChatStore.from_params("localhost", tll=300),
    ],
    ids=["session", "from_uri", "from_params"],
)
def test_unknown_argument_is_an_error_naming_it(
    yugabytedb_url: str, build: Callable[[str], object]
) -> None:
    """An argument the store does not take raises, naming it (no silent defaults).

    If this fails: the store's pydantic config no longer forbids extra arguments.
    """
    with pytest.raises((TypeError, ValueError), match="tll"):
        build(yugabytedb_url)
