"""Both directions with LlamaIndex's own TablestoreChatStore 0.4.0, on the same emulator.

LlamaIndex's package shares our import path, so it runs in the reference environment
(a separate venv) and reaches the emulator over the network like any client.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from llama_index.storage.chat_store.core import ChatMessage, message_to_json
from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.tablestore._sdk import ts
from llama_index.storage.chat_store.tablestore.testing import TablestoreConnection

REFERENCE = ["llama-index-storage-chat-store-tablestore==0.4.0"]
DATA = Path(__file__).parent / "data"

_CONNECT = """
import json, sys
from llama_index.core.llms import ChatMessage
from llama_index.storage.chat_store.tablestore import TablestoreChatStore
endpoint, instance, key_id, secret, table = sys.argv[1:6]
store = TablestoreChatStore(endpoint=endpoint, instance_name=instance, access_key_id=key_id,
                            access_key_secret=secret, table_name=table)
"""

WRITE = (
    _CONNECT
    + """
store.create_table_if_not_exist()
for key, messages in json.loads(sys.argv[6]).items():
    store.set_messages(key, [ChatMessage.model_validate_json(m) for m in messages[:1]])
    for m in messages[1:]:
        store.add_message(key, ChatMessage.model_validate_json(m))
dump = {k: [m.model_dump_json() for m in store.get_messages(k)] for k in store.get_keys()}
print(json.dumps(dump))
"""
)

READ = (
    _CONNECT
    + """
dump = {k: [m.model_dump_json() for m in store.get_messages(k)] for k in store.get_keys()}
print(json.dumps(dump))
"""
)


def _conversations() -> dict[str, list[ChatMessage]]:
    return {
        "user-1": [
            ChatMessage(role="system", content="be brief"),
            ChatMessage(role="user", content="héllo 😀"),
            ChatMessage(
                role="assistant",
                content=None,
                additional_kwargs={"tool_calls": [{"id": "c1", "function": {"name": "f"}}]},
            ),
        ],
        "user/2 'quoted'": [ChatMessage(role="user", content="second")],
    }


def _as_json(conversations: dict[str, Sequence[ChatMessage]]) -> dict[str, list[str]]:
    return {k: [message_to_json(m) for m in v] for k, v in conversations.items()}


def _args(c: TablestoreConnection, table: str) -> list[str]:
    return [c.endpoint, c.instance_name, c.access_key_id, c.access_key_secret, table]


@pytest.fixture
def reference(llama_index_reference: Callable[[Sequence[str]], Any]) -> Any:
    return llama_index_reference(REFERENCE)


def test_rows_written_by_llama_index_read_correctly(
    reference: Any, new_store: Callable[..., Any], tablestore_connection: TablestoreConnection,
    raw_client: Any,
) -> None:  # fmt: skip
    table = new_store(layout="llama_index")().table_name
    raw_client.delete_table(table)  # let LlamaIndex create its own table
    expected = _as_json(_conversations())
    written = json.loads(
        reference.run(WRITE, *_args(tablestore_connection, table), json.dumps(expected))
    )
    assert written == expected
    ours = new_store()(table_name=table)  # layout="auto" detects LlamaIndex's primary key
    assert sorted(ours.get_keys()) == sorted(expected)
    assert {k: [message_to_json(m) for m in ours.get_messages(k)] for k in expected} == expected
    assert ours.count_messages("user-1") == 3


def test_llama_index_reads_what_we_write_in_its_layout(
    reference: Any, new_store: Callable[..., Any], tablestore_connection: TablestoreConnection
) -> None:
    store = new_store(layout="llama_index")()
    conversations = _conversations()
    for key, messages in conversations.items():
        store.add_messages(key, messages[:1])
        for message in messages[1:]:
            store.add_message(key, message)
    seen = json.loads(reference.run(READ, *_args(tablestore_connection, store.table_name)))
    assert seen == _as_json(conversations)


def test_checked_in_llama_index_rows_read_correctly(
    new_store: Callable[..., Any], raw_client: Any
) -> None:
    """Rows LlamaIndex 0.4.0 wrote (tests/data, see generate_llama_index_rows.py) read as is."""
    sample = json.loads((DATA / "llama_index_rows.json").read_text(encoding="utf-8"))
    store: TablestoreChatStore = new_store(layout="llama_index")()
    for key, history in sample["rows"].items():
        raw_client.put_row(store.table_name, ts.Row([("session_id", key)], [("history", history)]))
    reader = new_store()(table_name=store.table_name)
    got = {k: [message_to_json(m) for m in reader.get_messages(k)] for k in sample["rows"]}
    assert got == sample["messages"]
