"""LlamaIndex's PostgresChatStore constructor forms build working stores, on a real PostgreSQL.

LlamaIndex's forms: ``PostgresChatStore(session, async_session, table_name, schema_name,
use_jsonb)`` with SQLAlchemy sessionmakers, ``from_uri(uri, table_name, schema_name, debug,
use_jsonb)`` and ``from_params(host, port, database, user, password, table_name,
schema_name, connection_string, async_connection_string, debug, use_jsonb)``. Each form writes
a message and reads it back (sync and async); an argument no store knows raises, naming it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from llama_index.storage.chat_store.core import (
    Capability,
    ConfigurationError,
    chat_store_from_dict,
)
from llama_index.storage.chat_store.postgres import PostgresChatStore
from llama_index.storage.chat_store.postgres.testing import round_trip_sync_and_async


def _driver(url: str, driver: str) -> str:
    return make_url(url).set(drivername=driver).render_as_string(hide_password=False)


@pytest.mark.parametrize(
    "async_maker",
    [
        lambda engine: sessionmaker(engine, class_=AsyncSession),
        lambda engine: async_sessionmaker(engine),
    ],
    ids=["sessionmaker", "async_sessionmaker"],
)
def test_sessionmakers_positionally(
    database_url_for_module: str, schema_name: str, async_maker: Callable[..., object]
) -> None:
    """PostgresChatStore(session, async_session, table, schema, use_jsonb), as in LlamaIndex.

    The sync engine of the session serves the sync calls and stays the caller's.
    If this fails: __init__'s positional parameters drifted from LlamaIndex's order, or
    the sessionmakers' engines are not used.
    """
    engine = create_engine(_driver(database_url_for_module, "postgresql+psycopg"))
    async_engine = create_async_engine(_driver(database_url_for_module, "postgresql+asyncpg"))
    store = PostgresChatStore(
        sessionmaker(engine), async_maker(async_engine), "chatstore", schema_name, True
    )
    assert (store.table_name, store.schema_name, store.use_jsonb) == (
        "chatstore", schema_name, True,
    )  # fmt: skip
    round_trip_sync_and_async(store)
    assert engine.pool.checkedin() >= 1  # the store used (and returned) the caller's pool
    with engine.connect() as still_open:  # close() left the caller's engine alone
        assert still_open.exec_driver_sql("SELECT 1").scalar() == 1
    engine.dispose()


def test_from_uri_positionally(database_url_for_module: str, schema_name: str) -> None:
    """from_uri(uri, table_name, schema_name, debug, use_jsonb), LlamaIndex's order.

    If this fails: from_uri's positional parameters drifted from LlamaIndex's order.
    """
    uri = _driver(database_url_for_module, "postgresql+asyncpg")
    store = PostgresChatStore.from_uri(uri, "chats", schema_name, True, False)
    assert (store.table_name, store.schema_name) == ("chats", schema_name)
    assert store.engine_options == {"echo": True}
    round_trip_sync_and_async(store)


def test_from_params_positionally(database_url_for_module: str, schema_name: str) -> None:
    """from_params(host, port, database, user, password, table_name, schema_name, ...).

    If this fails: from_params' positional parameters drifted from LlamaIndex's order.
    """
    url = make_url(database_url_for_module)
    store = PostgresChatStore.from_params(
        url.host, url.port, url.database, url.username, "unused-by-trust-auth", "chats",
        schema_name,
    )  # fmt: skip
    assert store.password is not None
    round_trip_sync_and_async(store)


def test_from_params_connection_strings(database_url_for_module: str, schema_name: str) -> None:
    """from_params(connection_string=..., async_connection_string=...) uses that database.

    If this fails: the connection strings are ignored or rejected.
    """
    store = PostgresChatStore.from_params(
        connection_string=_driver(database_url_for_module, "postgresql+psycopg"),
        async_connection_string=_driver(database_url_for_module, "postgresql+asyncpg"),
        schema_name=schema_name,
    )
    round_trip_sync_and_async(store)


def test_two_databases_are_refused(database_url_for_module: str) -> None:
    """Sessions or connection strings naming two databases raise ConfigurationError.

    If this fails: the store would write sync and async calls to different databases.
    """
    other = make_url(database_url_for_module).set(database="elsewhere")
    engine = create_engine(_driver(database_url_for_module, "postgresql+psycopg"))
    async_engine = create_async_engine(other.set(drivername="postgresql+asyncpg"))
    with pytest.raises(ConfigurationError, match="different databases"):
        PostgresChatStore(sessionmaker(engine), async_sessionmaker(async_engine))
    with pytest.raises(ConfigurationError, match="different databases"):
        PostgresChatStore.from_params(
            connection_string=database_url_for_module,
            async_connection_string=other.render_as_string(hide_password=False),
        )


def test_session_that_is_not_a_sessionmaker_is_a_type_error() -> None:
    """A URL where LlamaIndex takes a sessionmaker raises TypeError pointing to from_uri.

    If this fails: __init__ accepts any first argument again.
    """
    with pytest.raises(TypeError, match="from_uri"):
        PostgresChatStore("postgresql://localhost/db")


def test_base_module_exports_the_store() -> None:
    """LlamaIndex's documented import path works.

    If this fails: postgres/base.py is missing or re-exports something else.
    """
    from llama_index.storage.chat_store.postgres.base import PostgresChatStore as FromBase

    assert FromBase is PostgresChatStore


@pytest.mark.parametrize(
    "build",
    [
        lambda url: PostgresChatStore(sessionmaker(create_engine(url)), tll=300),
        lambda url: PostgresChatStore(connection_string=url, tll=300),
        lambda url: PostgresChatStore.from_uri(url, tll=300),
        lambda url: PostgresChatStore.from_params("localhost", 5432, "db", tll=300),
    ],
    ids=["sessions", "connection_string", "from_uri", "from_params"],
)
def test_unknown_argument_is_an_error_naming_it(
    database_url_for_module: str, build: Callable[[str], object]
) -> None:
    """An argument the store does not take raises, naming it (no silent defaults).

    If this fails: the store's pydantic config no longer forbids extra arguments.
    """
    url = _driver(database_url_for_module, "postgresql+psycopg")
    with pytest.raises((TypeError, ValueError), match="tll"):
        build(url)


def test_retry_options_from_the_url_and_keywords() -> None:
    """retries, retry_backoff and retry_deadline come from the URL query or keywords.

    If this fails: the URL's retry options reach the driver (which rejects them) instead of
    the store, or ``retries=0`` still claims exactly-once changes (nothing would retry them).
    """
    url = "postgresql://u@127.0.0.1:1/db?retries=5&retry_backoff=0.2&retry_deadline=30"
    store = PostgresChatStore.from_uri(url)
    assert (store.retries, store.retry_backoff, store.retry_deadline) == (5, 0.2, 30.0)
    assert "retries" not in store.connection_string
    assert Capability.EXACTLY_ONCE in store.capabilities
    rebuilt = chat_store_from_dict(store.to_dict())
    assert isinstance(rebuilt, PostgresChatStore)
    assert (rebuilt.retries, rebuilt.retry_deadline) == (5, 30.0)
    off = PostgresChatStore.from_uri("postgresql://u@127.0.0.1:1/db", retries=0)
    assert Capability.EXACTLY_ONCE not in off.capabilities
    with pytest.raises(ValueError, match="retries"):
        PostgresChatStore.from_uri("postgresql://u@127.0.0.1:1/db", retries=-1)
