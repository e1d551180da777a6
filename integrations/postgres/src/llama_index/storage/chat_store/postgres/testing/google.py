"""The conformance suite's fixtures for a :class:`GoogleChatStore` subclass, written once.

AlloyDB's and Cloud SQL's tests run ``from_instance`` end to end against the session's
PostgreSQL: connectors with the methods of Google's (``connectors(host, port)`` returns a
sync and an async one, as the suite's local connectors do) open plain connections to it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.postgres.google import GoogleChatStore, GoogleConnectorEngine
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

__all__ = ["GoogleStoreConformance", "open_google_store", "use_local_connectors"]

Connectors = Callable[[str, int], tuple[Any, Any]]
"""``connectors(host, port)``: a sync and an async connector reaching that server."""
TABLE = "chat_history"


def _server(postgres_url: str) -> tuple[str, int, str, str]:
    parts = urlsplit(postgres_url)
    host, port = str(parts.hostname), int(parts.port or 5432)
    return host, port, parts.path.lstrip("/"), parts.username or "postgres"


def open_google_store(
    store_class: type[GoogleChatStore],
    instance: tuple[str, ...],
    connectors: Connectors,
    postgres_url: str,
    password: str,
    schema: str,
    address: tuple[str, int] | None = None,
) -> GoogleChatStore:
    """Build a store as Google's packages do: ``from_instance`` then ``from_engine``.

    Module-level and built from picklable arguments, so worker processes can rebuild it.

    Args:
        store_class: The store (its ``engine_class`` makes the engine).
        instance: ``from_instance``'s arguments before the database.
        connectors: Makes the connectors (module-level, for pickling).
        postgres_url: The server and database the connectors reach.
        password: The database password (trust authentication ignores it).
        schema: The store's schema.
        address: Another ``(host, port)`` for the connectors (a dead one, a proxy).
    """
    host, port, database, user = _server(postgres_url)
    sync, async_ = connectors(*(address or (host, port)))
    engine_class = store_class.engine_class
    assert engine_class is not None
    engine = engine_class.from_instance(
        *instance, database, user=user, password=password,
        connector=sync, async_connector=async_,
    )  # fmt: skip
    return store_class.from_engine(engine, table_name=TABLE, schema_name=schema)


def use_local_connectors(
    monkeypatch: pytest.MonkeyPatch,
    engine_class: type[GoogleConnectorEngine],
    connectors: Connectors,
    postgres_url: str,
) -> str:
    """Make ``engine_class``'s default connectors reach ``postgres_url``; return its database.

    Engines made without connectors (``from_url``, stores rebuilt from their dump, code
    written for Google's packages) then connect locally too.
    """
    host, port, database, _ = _server(postgres_url)
    monkeypatch.setattr(
        engine_class, "connector_factory", staticmethod(lambda **_: connectors(host, port)[0])
    )
    monkeypatch.setattr(
        engine_class, "async_connector_factory", staticmethod(lambda **_: connectors(host, port)[1])
    )
    return database


class GoogleStoreConformance(ChatStoreConformance):
    """The suite on a :class:`GoogleChatStore` subclass, ``from_instance`` through local connectors.

    A subclass sets ``store_class``, ``instance`` (``from_instance``'s arguments before the
    database) and ``connectors`` (module-level); the session's ``postgres_url`` fixture
    gives the server. Each test's store has a schema of its own.
    """

    store_class: ClassVar[type[GoogleChatStore]]
    instance: ClassVar[tuple[str, ...]]
    connectors: ClassVar[Connectors]
    password: ClassVar[str] = "google-not-a-real-password-5V"  # noqa: S105 (trust auth ignores it)

    @pytest.fixture(autouse=True)
    def _local_default_connectors(self, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Stores rebuilt from their dump (their engine's URL) connect locally too."""
        engine_class = self.store_class.engine_class
        assert engine_class is not None
        use_local_connectors(monkeypatch, engine_class, type(self).connectors, postgres_url)

    @pytest.fixture
    def store_factory_for(self, postgres_url: str) -> Callable[..., Callable[[], BaseChatStore]]:
        """Stores over the schema ``name``, optionally through connectors to ``address``."""
        cls = type(self)

        def factory_for(
            name: str, *, address: tuple[str, int] | None = None, **options: Any
        ) -> Callable[[], BaseChatStore]:
            if options:  # Google's layout has no options the suite passes (no ttl)
                raise TypeError(f"Google's layout takes no {sorted(options)}")
            return partial(
                open_google_store, cls.store_class, cls.instance, cls.connectors,
                postgres_url, cls.password, name, address,
            )  # fmt: skip

        return factory_for

    @pytest.fixture
    def server_address(self, postgres_url: str) -> tuple[str, int]:
        """The session's PostgreSQL."""
        host, port, _, _ = _server(postgres_url)
        return host, port

    @pytest.fixture
    def make_corrupt(
        self, store: GoogleChatStore, postgres_url: str
    ) -> Callable[[str], BaseChatStore]:
        """A row whose message is not a message, after a readable one."""

        def corrupt(key: str) -> BaseChatStore:
            store.add_message(key, ChatMessage(content="fine"))
            with psycopg.connect(postgres_url, autocommit=True) as raw:
                insert = sql.SQL("INSERT INTO {}.{} (key, message) VALUES (%s, %s::json)")
                table = (sql.Identifier(store.schema_name), sql.Identifier(TABLE))
                raw.execute(insert.format(*table), (key, '{"role": "user", "blocks": 42}'))
            return store

        return corrupt

    @pytest.fixture
    def secrets(self) -> dict[str, str]:
        """The password a dump leaves out."""
        return {"password": self.password}

    @pytest.mark.skipif(
        not LLAMA_INDEX_INSTALLED,
        reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
        "llama-index test environment runs this)",
    )
    def test_docs_google_cloud_block_in_simple_chat_engine(
        self, postgres_url: str, google_cloud_table: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The page's block as written: from_instance by keywords, the table, create_sync, a turn.

        Google's module names become ours; the default connectors reach the session's
        PostgreSQL. If this fails: the engine or store does not take the page's keywords, the
        table is not created, or the store is not LlamaIndex's BaseChatStore.
        """
        from llama_index.storage.chat_store.testing.llama_index_docs import (
            check_google_cloud_block,
        )

        cls = type(self)
        engine_class = cls.store_class.engine_class
        assert engine_class is not None
        _, _, database, user = _server(postgres_url)
        names = list(inspect.signature(engine_class.from_instance).parameters)
        given = dict(zip(names[: len(cls.instance)], cls.instance, strict=True))
        check_google_cloud_block(
            engine_class, cls.store_class, capsys, table_name=google_cloud_table,
            **given, database=database, user=user, password=cls.password,
        )  # fmt: skip
