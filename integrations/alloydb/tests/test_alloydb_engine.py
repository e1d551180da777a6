"""AlloyDBEngine: what reaches the connector, URLs, auth options, async creation."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

import pytest

from llama_index.storage.chat_store.alloydb import AlloyDBChatStore, AlloyDBEngine
from llama_index.storage.chat_store.core import (
    BackendImportError,
    ChatMessage,
    ConfigurationError,
)
from llama_index.storage.chat_store.postgres.testing import LocalAsyncConnector, LocalConnector


def _local(postgres_url: str) -> tuple[str, int, str]:
    parts = urlsplit(postgres_url)
    return str(parts.hostname), int(parts.port or 5432), parts.path.lstrip("/")


def test_from_instance_passes_instance_and_credentials(postgres_url: str) -> None:
    """The connector gets AlloyDB's instance URI, the driver and basic-auth arguments."""
    host, port, database = _local(postgres_url)
    sync, async_ = LocalConnector(host, port), LocalAsyncConnector(host, port)
    engine = AlloyDBEngine.from_instance(
        "proj", "europe-west1", "clu", "inst", database, user="test", password="pw",
        ip_type="private", connector=sync, async_connector=async_,
    )  # fmt: skip
    store = AlloyDBChatStore.create_sync(engine, table_name=f"e_{uuid.uuid4().hex[:8]}")
    store.add_message("k", ChatMessage(content="x"))

    async def read() -> int:
        again = await AlloyDBChatStore.create(engine, table_name=store.table_name)
        try:
            return await again.acount_messages("k")
        finally:
            await again.aclose()

    assert asyncio.run(read()) == 1
    uri = "projects/proj/locations/europe-west1/clusters/clu/instances/inst"
    expected = {"user": "test", "password": "pw", "db": database, "enable_iam_auth": False,
                "ip_type": "private"}  # fmt: skip
    assert sync.calls[0] == (uri, "pg8000", expected)
    assert async_.calls[0] == (uri, "asyncpg", expected)
    assert "pw" not in repr(store) + str(store.to_dict())
    assert store.to_dict()["connection_string"].startswith("alloydb://proj/europe-west1/clu/")
    store.close()


def test_iam_authentication_and_bad_auth_options() -> None:
    """No password means IAM auth as iam_account_email; half a credential is an error."""
    engine = AlloyDBEngine.from_instance(
        "p", "r", "c", "i", "db", iam_account_email="sa@p.iam", connector=LocalConnector("x", 1)
    )
    assert "user=sa%40p.iam" in engine.url
    with pytest.raises(ConfigurationError):
        AlloyDBEngine.from_instance("p", "r", "c", "i", "db", user="only-user")
    with pytest.raises(ConfigurationError):
        AlloyDBEngine.from_instance("p", "r", "c", "i", "db")


def test_alloydb_url_and_missing_connector(postgres_url: str) -> None:
    """alloydb:// URLs name the instance; without Google's connector the error says why."""
    store = AlloyDBChatStore.from_url(
        "alloydb://proj/reg/clu/inst/db?table=hist&schema=app&user=u", password="pw"
    )
    assert (store.table_name, store.schema_name) == ("hist", "app")
    with pytest.raises(BackendImportError, match=r"alloydb\[connector\]"):
        store.count_messages("k")


def test_from_connection_string_uses_a_plain_url(postgres_url: str) -> None:
    """from_connection_string connects without a connector (sync psycopg, async asyncpg)."""
    engine = AlloyDBEngine.from_connection_string(
        postgres_url.replace("postgresql://", "postgresql+asyncpg://")
    )
    store = AlloyDBChatStore.create_sync(engine, table_name=f"u_{uuid.uuid4().hex[:8]}")
    store.add_message("k", ChatMessage(content="plain"))
    assert asyncio.run(store.aget_messages("k"))[0].content == "plain"
    store.close()


def test_ttl_is_refused() -> None:
    """Google's layout has no expiry column, so a ttl is a configuration error."""
    with pytest.raises(ValueError, match="ttl"):
        AlloyDBChatStore(connection_string="alloydb://p/r/c/i/d", ttl=5)
