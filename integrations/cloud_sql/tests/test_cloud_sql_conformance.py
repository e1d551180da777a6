"""Cloud SQL's PostgresChatStore against the suite: from_instance through a local connector.

The connector has the methods and arguments of Google's Cloud SQL connector and opens a
plain connection to the session's PostgreSQL (pg8000 for sync, asyncpg for async).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pg8000.dbapi
import pytest

from llama_index.storage.chat_store.cloud_sql import PostgresChatStore, PostgresEngine
from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.postgres.testing import LocalConnector
from llama_index.storage.chat_store.testing import ChatStoreConformance

PASSWORD = "cloudsql-not-a-real-password-4W"


def make_store(host: str, port: int, database: str, schema: str) -> PostgresChatStore:
    """Build a store as Google's package does; module-level so worker processes can unpickle it."""
    local = LocalConnector(host, port)
    engine = PostgresEngine.from_instance(
        "my-project", "us-central1", "my-instance", database, user="test", password=PASSWORD,
        connector=local, async_connector=local,
    )  # fmt: skip
    return PostgresChatStore.from_engine(engine, table_name="chat_history", schema_name=schema)


def server(postgres_url: str) -> tuple[str, int, str]:
    parts = urlsplit(postgres_url)
    return str(parts.hostname), int(parts.port or 5432), parts.path.lstrip("/")


class TestCloudSQLConformance(ChatStoreConformance):
    @pytest.fixture(autouse=True)
    def _local_default_connectors(self, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Stores rebuilt from their dump (cloudsql:// URL) connect locally too."""
        host, port, _ = server(postgres_url)
        local = staticmethod(lambda quota_project: LocalConnector(host, port))
        monkeypatch.setattr(PostgresEngine, "connector_factory", local)
        monkeypatch.setattr(PostgresEngine, "async_connector_factory", local)

    @pytest.fixture
    def schema_name(self) -> str:
        return f"s_{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def store_factory_for(
        self, postgres_url: str, schema_name: str, storage_name: str
    ) -> Callable[..., Callable[[], BaseChatStore]]:
        def factory_for(
            name: str, *, address: tuple[str, int] | None = None, **options: Any
        ) -> Callable[[], BaseChatStore]:
            if options:  # Google's layout has no options the suite passes (no ttl)
                raise TypeError(f"Google's layout takes no {sorted(options)}")
            host, port, database = server(postgres_url)
            host, port = address or (host, port)
            schema = schema_name if name == storage_name else name
            return functools.partial(make_store, host, port, database, schema)

        return factory_for

    @pytest.fixture
    def server_address(self, postgres_url: str) -> tuple[str, int]:
        host, port, _ = server(postgres_url)
        return host, port

    @pytest.fixture
    def make_corrupt(
        self, store: PostgresChatStore, postgres_url: str
    ) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            store.add_message(key, ChatMessage(content="fine"))
            host, port, database = server(postgres_url)
            raw = pg8000.dbapi.connect(user="test", host=host, port=port, database=database)
            cursor = raw.cursor()
            cursor.execute(
                f'INSERT INTO "{store.schema_name}".chat_history (key, message) '
                "VALUES (%s, CAST(%s AS json))",
                (key, '{"role": "user", "blocks": 42}'),
            )
            raw.commit()
            raw.close()
            return store

        return corrupt

    @pytest.fixture
    def secrets(self) -> dict[str, str]:
        return {"password": PASSWORD}
