"""PostgresChatStore against the conformance suite on a real PostgreSQL, in every layout."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.postgres import PostgresChatStore
from llama_index.storage.chat_store.postgres.testing import NOT_A_MESSAGE, damage_second_message
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.faults import address_of, url_at
from llama_index.storage.chat_store.testing.services import free_port

PASSWORD = "not-a-real-password-7Q"  # trust auth ignores it; it must still never leak


def _executor(url: str) -> Callable[[str, tuple[Any, ...]], None]:
    def execute(sql: str, params: tuple[Any, ...]) -> None:
        with psycopg.connect(url, autocommit=True) as raw:
            raw.execute(sql, params)

    return execute


class _PostgresFixtures(ChatStoreConformance):
    options: dict[str, Any] = {}

    @pytest.fixture
    def store_factory_for(
        self, database_url_for_module: str, schema_name: str, storage_name: str
    ) -> Callable[..., Callable[[], BaseChatStore]]:
        def factory_for(
            name: str, *, address: tuple[str, int] | None = None, **options: Any
        ) -> Callable[[], BaseChatStore]:
            url = database_url_for_module
            return functools.partial(
                PostgresChatStore.from_uri,
                url if address is None else url_at(url, *address),
                schema_name=schema_name if name == storage_name else name,
                password=PASSWORD,
                **{**self.options, **options},
            )

        return factory_for

    @pytest.fixture
    def server_address(self, database_url_for_module: str) -> tuple[str, int]:
        return address_of(database_url_for_module, 5432)

    @pytest.fixture
    def unreachable_store(self) -> BaseChatStore:  # quick to give up
        return PostgresChatStore.from_uri(
            f"postgresql://test:{PASSWORD}@127.0.0.1:{free_port()}/postgres?connect_timeout=2",
            **self.options,
        )

    @pytest.fixture
    def secrets(self) -> dict[str, str]:
        return {"password": PASSWORD}


class TestPostgresConformance(_PostgresFixtures):
    """Our layout, with a ttl long enough never to fire except in the TTL tests."""

    options = {"ttl": 3600}

    @pytest.fixture
    def make_corrupt(
        self, store: PostgresChatStore, database_url_for_module: str
    ) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            return damage_second_message(
                store, key, _executor(database_url_for_module), table="chatstore"
            )

        return corrupt


class TestPostgresGoogleLayoutConformance(_PostgresFixtures):
    """The AlloyDB / Cloud SQL table layout (no bookkeeping rows, no TTL)."""

    options = {"layout": "google"}

    @pytest.fixture
    def make_corrupt(
        self, store: PostgresChatStore, database_url_for_module: str
    ) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            store.add_message(key, ChatMessage(content="fine"))
            with psycopg.connect(database_url_for_module, autocommit=True) as raw:
                raw.execute(
                    f'INSERT INTO "{store.schema_name}".chatstore (key, message) '
                    "VALUES (%s, %s::json)",
                    (key, NOT_A_MESSAGE),
                )
            return store

        return corrupt


class TestPostgresLlamaIndexLayoutConformance(_PostgresFixtures):
    """LlamaIndex's own table (one row per key, an array of JSON), written atomically."""

    options = {"layout": "llama_index"}

    @pytest.fixture
    def make_corrupt(
        self, store: PostgresChatStore, database_url_for_module: str
    ) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            execute = _executor(database_url_for_module)
            return damage_second_message(store, key, execute, table="chatstore", array=True)

        return corrupt
