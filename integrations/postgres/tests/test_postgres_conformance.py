"""PostgresChatStore (native layout) against the conformance suite, on a real PostgreSQL."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.postgres import PostgresChatStore
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.services import free_port

PASSWORD = "not-a-real-password-7Q"  # trust auth ignores it; it must still never leak


class TestPostgresConformance(ChatStoreConformance):
    @pytest.fixture
    def store_factory(
        self, database_url_for_module: str, schema_name: str
    ) -> Callable[[], BaseChatStore]:
        return functools.partial(
            PostgresChatStore.from_uri,
            database_url_for_module,
            schema_name=schema_name,
            password=PASSWORD,
        )

    @pytest.fixture
    def other_store(self, database_url_for_module: str) -> Iterator[BaseChatStore]:
        store = PostgresChatStore.from_uri(
            database_url_for_module, schema_name=f"o_{uuid.uuid4().hex[:12]}"
        )
        yield store
        store.close()

    @pytest.fixture
    def unreachable_store(self) -> BaseChatStore:
        return PostgresChatStore.from_uri(
            f"postgresql://test:{PASSWORD}@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
        )

    @pytest.fixture
    def ttl_store_factory(
        self, database_url_for_module: str
    ) -> Iterator[Callable[[int], BaseChatStore]]:
        made: list[BaseChatStore] = []

        def make(seconds: int) -> BaseChatStore:
            store = PostgresChatStore.from_uri(
                database_url_for_module, schema_name=f"t_{uuid.uuid4().hex[:12]}", ttl=seconds
            )
            made.append(store)
            return store

        yield make
        for store in made:
            store.close()

    @pytest.fixture
    def make_corrupt(
        self, store: PostgresChatStore, database_url_for_module: str
    ) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            store.add_message(key, ChatMessage(content="fine"))
            store.add_message(key, ChatMessage(content="will be damaged"))
            with psycopg.connect(database_url_for_module, autocommit=True) as raw:
                raw.execute(
                    f'UPDATE "{store.schema_name}".chatstore SET message = %s::json '
                    "WHERE id = (SELECT max(id) FROM "
                    f'"{store.schema_name}".chatstore WHERE key = %s)',
                    ('{"role": "user", "blocks": 42}', key),
                )
            return store

        return corrupt

    @pytest.fixture
    def secrets(self) -> dict[str, str]:
        return {"password": PASSWORD}
