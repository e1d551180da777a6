"""YugabyteDBChatStore against the suite, through the smart driver with load balancing on.

PostgreSQL with YugabyteDB's two SQL shims stands in for the cluster (see the
``yugabytedb_url`` fixture), so ``load_balance=true`` runs the driver's real code path.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg2
import pytest

from llama_index.storage.chat_store.core import BaseChatStore
from llama_index.storage.chat_store.postgres.testing import damage_second_message
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.faults import address_of, url_at
from llama_index.storage.chat_store.testing.services import free_port
from llama_index.storage.chat_store.yugabytedb import YugabyteDBChatStore

PASSWORD = "yb-not-a-real-password-3K"
SMART = "&topology_keys=cloud1.datacenter1.rack1&yb_servers_refresh_interval=60"


def libpq_url(yugabytedb_url: str) -> str:
    parts = urlsplit(yugabytedb_url)
    return urlunsplit(parts._replace(scheme="postgresql", query=""))


def schema() -> str:
    return f"s_{uuid.uuid4().hex[:12]}"


class _YugabyteFixtures(ChatStoreConformance):
    options: dict[str, Any] = {}

    @pytest.fixture
    def schema_name(self) -> str:
        return schema()

    @pytest.fixture
    def store_factory_for(
        self, yugabytedb_url: str, schema_name: str, storage_name: str
    ) -> Callable[..., Callable[[], BaseChatStore]]:
        def factory_for(
            name: str, *, address: tuple[str, int] | None = None, **options: Any
        ) -> Callable[[], BaseChatStore]:
            url = yugabytedb_url + SMART
            if address is not None:
                # Without load balancing: the smart driver would connect to the servers the
                # cluster lists (the server itself), around the proxy at the address.
                parts = urlsplit(url_at(yugabytedb_url, *address))
                query = [(k, v) for k, v in parse_qsl(parts.query) if k != "load_balance"]
                url = urlunsplit(
                    parts._replace(query=urlencode([*query, ("load_balance", "false")]))
                )
            return functools.partial(
                YugabyteDBChatStore.from_uri,
                url,
                schema_name=schema_name if name == storage_name else name,
                password=PASSWORD,
                **{**self.options, **options},
            )

        return factory_for

    @pytest.fixture
    def server_address(self, yugabytedb_url: str) -> tuple[str, int]:
        return address_of(yugabytedb_url, 5433)

    @pytest.fixture
    def unreachable_store(self) -> BaseChatStore:
        # Without load balancing: the smart driver keeps ONE process-wide balancer per
        # load_balance value, which would route this store to the live test server's address
        # (learned from yb_servers()), fail on the missing database and then shun that
        # address for failed_host_ttl_seconds, breaking the next tests.
        return YugabyteDBChatStore.from_uri(
            f"yugabytedb+psycopg2://yugabyte:{PASSWORD}@127.0.0.1:{free_port()}/yugabyte"
            "?load_balance=false&connect_timeout=2",
            **self.options,
        )

    @pytest.fixture
    def secrets(self) -> dict[str, str]:
        return {"password": PASSWORD}

    @staticmethod
    def _executor(yugabytedb_url: str) -> Callable[[str, tuple[Any, ...]], None]:
        def execute(sql: str, params: tuple[Any, ...]) -> None:
            with psycopg2.connect(libpq_url(yugabytedb_url)) as raw, raw.cursor() as cursor:
                cursor.execute(sql, params)

        return execute


class TestYugabyteDBConformance(_YugabyteFixtures):
    options = {"ttl": 3600}

    @pytest.fixture
    def make_corrupt(
        self, store: YugabyteDBChatStore, yugabytedb_url: str
    ) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            return damage_second_message(
                store, key, self._executor(yugabytedb_url), table="chatstore"
            )

        return corrupt


class TestYugabyteDBLlamaIndexLayoutConformance(_YugabyteFixtures):
    """LlamaIndex's YugabyteDBChatStore table (``data_<table>``), written atomically."""

    options = {"layout": "llama_index"}

    @pytest.fixture
    def make_corrupt(
        self, store: YugabyteDBChatStore, yugabytedb_url: str
    ) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            execute = self._executor(yugabytedb_url)
            return damage_second_message(store, key, execute, table="data_chatstore", array=True)

        return corrupt
