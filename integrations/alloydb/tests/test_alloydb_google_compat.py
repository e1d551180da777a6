"""Google's llama-index-alloydb-pg 0.3.1 and ours share one table, both directions.

Google's package runs in the reference environment (a subprocess) on the same server;
ours runs from_instance end to end through the local connector.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from llama_index.storage.chat_store.alloydb import AlloyDBChatStore, AlloyDBEngine
from llama_index.storage.chat_store.core import ChatMessage, message_from_json, message_to_json
from llama_index.storage.chat_store.postgres.testing import LocalAsyncConnector, LocalConnector
from llama_index.storage.chat_store.testing.services import ReferencePython

REQUIREMENTS = ["llama-index-alloydb-pg==0.3.1", "llama-index-cloud-sql-pg==0.3.1"]

GOOGLE = """
import json, sys
from llama_index.core.llms import ChatMessage
from llama_index_alloydb_pg import AlloyDBEngine, AlloyDBChatStore
url, table, mode = sys.argv[1:]
engine = AlloyDBEngine.from_connection_string(url)
if mode == "write":
    engine.init_chat_store_table(table_name=table)
store = AlloyDBChatStore.create_sync(engine, table_name=table)
if mode == "write":
    messages = [ChatMessage(role="user", content="from Google ✓", additional_kwargs={"x": 1.5}),
                ChatMessage(role="assistant", content="second")]
    store.set_messages("u1", messages)
    store.add_message("u2", ChatMessage(role="user", content="other"))
print(json.dumps({k: [m.model_dump_json() for m in store.get_messages(k)]
                  for k in sorted(store.get_keys())}))
"""


def _engine(postgres_url: str) -> AlloyDBEngine:
    parts = urlsplit(postgres_url)
    host, port = str(parts.hostname), int(parts.port or 5432)
    return AlloyDBEngine.from_instance(
        "p", "r", "c", "i", parts.path.lstrip("/"), user="test", password="pw",
        connector=LocalConnector(host, port), async_connector=LocalAsyncConnector(host, port),
    )  # fmt: skip


def test_google_and_ours_share_a_table(
    llama_index_reference: Callable[[Sequence[str]], ReferencePython], postgres_url: str
) -> None:
    """Rows written by Google's store read byte-identical in ours, and the reverse."""
    reference = llama_index_reference(REQUIREMENTS)
    google_url = postgres_url.replace("postgresql://", "postgresql+asyncpg://")
    table = f"g_{uuid.uuid4().hex[:8]}"
    written = json.loads(reference.run(GOOGLE, google_url, table, "write"))

    store = AlloyDBChatStore.create_sync(_engine(postgres_url), table_name=table)
    assert [message_to_json(m) for m in store.get_messages("u1")] == written["u1"]
    assert sorted(store.get_keys()) == ["u1", "u2"]
    store.add_message("u1", ChatMessage(role="user", content="ours"))
    store.add_message("u1", ChatMessage(role="user", content="ours first"), idx=0)
    assert store.delete_last_message("u2") is not None
    expected = [message_to_json(m) for m in store.get_messages("u1")]
    store.close()

    seen = json.loads(reference.run(GOOGLE, google_url, table, "read"))
    assert list(seen) == ["u1"]
    assert [message_to_json(message_from_json(m)) for m in seen["u1"]] == expected
    assert [message_from_json(m).content for m in seen["u1"]] == [
        "ours first", "from Google ✓", "second", "ours",
    ]  # fmt: skip


def test_table_created_by_ours_opens_in_google(
    llama_index_reference: Callable[[Sequence[str]], ReferencePython], postgres_url: str
) -> None:
    """init_chat_store_table makes Google's exact table: Google's create_sync accepts it."""
    reference = llama_index_reference(REQUIREMENTS)
    table = f"o_{uuid.uuid4().hex[:8]}"
    engine = _engine(postgres_url)
    engine.init_chat_store_table(table_name=table)
    engine.init_chat_store_table(table_name=table)  # idempotent
    store = AlloyDBChatStore.create_sync(engine, table_name=table)
    store.add_messages("k", [ChatMessage(content="a"), ChatMessage(content="b")])
    store.close()
    google_url = postgres_url.replace("postgresql://", "postgresql+asyncpg://")
    seen = json.loads(reference.run(GOOGLE, google_url, table, "read"))
    assert [message_from_json(m).content for m in seen["k"]] == ["a", "b"]
