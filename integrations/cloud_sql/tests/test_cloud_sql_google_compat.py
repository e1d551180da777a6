"""Google's llama-index-cloud-sql-pg 0.3.1 and ours share one table, both directions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import pytest

from llama_index.storage.chat_store.cloud_sql import PostgresChatStore, PostgresEngine
from llama_index.storage.chat_store.core import (
    BackendImportError,
    ChatMessage,
    ConfigurationError,
    message_from_json,
    message_to_json,
)
from llama_index.storage.chat_store.postgres import PostgresChatStore as OurPostgresChatStore
from llama_index.storage.chat_store.postgres.testing import LocalConnector
from llama_index.storage.chat_store.testing.services import ReferencePython

REQUIREMENTS = ["llama-index-alloydb-pg==0.3.1", "llama-index-cloud-sql-pg==0.3.1"]

GOOGLE = """
import json, sys
from llama_index.core.llms import ChatMessage
from llama_index_cloud_sql_pg import PostgresEngine, PostgresChatStore
url, table, mode = sys.argv[1:]
engine = PostgresEngine.from_engine_args(url)
if mode == "write":
    engine.init_chat_store_table(table_name=table)
store = PostgresChatStore.create_sync(engine, table_name=table)
if mode == "write":
    store.set_messages("u1", [ChatMessage(role="user", content="from Google ✓"),
                              ChatMessage(role="assistant", content="second")])
print(json.dumps({k: [m.model_dump_json() for m in store.get_messages(k)]
                  for k in sorted(store.get_keys())}))
"""


def _local(postgres_url: str) -> tuple[str, int, str]:
    parts = urlsplit(postgres_url)
    return str(parts.hostname), int(parts.port or 5432), parts.path.lstrip("/")


def test_google_and_ours_share_a_table(
    llama_index_reference: Callable[[Sequence[str]], ReferencePython], postgres_url: str
) -> None:
    """Rows written by Google's store read byte-identical in ours, and the reverse."""
    reference = llama_index_reference(REQUIREMENTS)
    google_url = postgres_url.replace("postgresql://", "postgresql+asyncpg://")
    table = f"g_{uuid.uuid4().hex[:8]}"
    written = json.loads(reference.run(GOOGLE, google_url, table, "write"))

    host, port, database = _local(postgres_url)
    local = LocalConnector(host, port)
    engine = PostgresEngine.from_instance(
        "proj", "asia-east1", "inst", database, user="test", password="pw", ip_type="private",
        quota_project="billing", connector=local, async_connector=local,
    )  # fmt: skip
    store = PostgresChatStore.create_sync(engine, table_name=table)
    assert [message_to_json(m) for m in store.get_messages("u1")] == written["u1"]
    store.add_message("u1", ChatMessage(role="user", content="ours"))
    store.add_messages("u2", [ChatMessage(content="ours too")])
    store.close()
    assert local.calls[0][:2] == ("proj:asia-east1:inst", "pg8000")
    assert local.calls[0][2]["enable_iam_auth"] is False

    seen = json.loads(reference.run(GOOGLE, google_url, table, "read"))
    assert {k: [message_from_json(m).content for m in v] for k, v in seen.items()} == {
        "u1": ["from Google ✓", "second", "ours"],
        "u2": ["ours too"],
    }


def test_class_name_differs_from_the_postgres_store() -> None:
    """Dumps tell Cloud SQL's PostgresChatStore from the Postgres package's."""
    assert PostgresChatStore.class_name() != OurPostgresChatStore.class_name()
    store = PostgresChatStore.from_url("cloudsql://p/r/i/db?table=t&user=u", password="pw")
    assert store.to_dict()["class_name"] == "CloudSQLPostgresChatStore"
    assert "pw" not in str(store.to_dict())
    with pytest.raises(BackendImportError, match=r"cloud-sql\[connector\]"):
        store.get_keys()
    with pytest.raises(ConfigurationError):
        PostgresEngine.from_instance("p", "r", "i", "db", password="only-password")
