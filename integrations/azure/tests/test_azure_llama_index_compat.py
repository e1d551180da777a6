"""Both directions against LlamaIndex's own AzureChatStore 0.6.0, on the same Azurite.

LlamaIndex's package shares our import path, so it runs in the reference environment
(a separate venv, driven through a subprocess).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest

from llama_index.storage.chat_store.azure import AzureChatStore
from llama_index.storage.chat_store.azure.testing import azurite_connection_string
from llama_index.storage.chat_store.core import ChatMessage, message_to_json
from llama_index.storage.chat_store.testing.services import ReferencePython

LLAMA_INDEX_AZURE = "llama-index-storage-chat-store-azure==0.6.0"

# Runs in the reference venv: writes with LlamaIndex's store, or reads with it.
REFERENCE_SCRIPT = r"""
import json, sys
from llama_index.core.llms import ChatMessage
from llama_index.storage.chat_store.azure import AzureChatStore

connection_string, table, action = sys.argv[1:4]
store = AzureChatStore.from_connection_string(connection_string, chat_table_name=table)
if action == "write":
    first = [ChatMessage(role="system", content="be brief")]
    more = [
        ChatMessage(role="user", content="héllo 😀 日本語"),
        ChatMessage(role="assistant", content=None, additional_kwargs={
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "f", "arguments": "{\"a\": 1}"}}]}),
        ChatMessage(role="tool", content="x" * 70000 + "é" * 3000,
                    additional_kwargs={"tool_call_id": "c1", "score": 0.25}),
    ]
    store.set_messages("user1", first)
    for message in more:
        store.add_message("user1", message)
    store.add_message("user 2", ChatMessage(role="user", content="second"))
    written = {"user1": first + more, "user 2": [ChatMessage(role="user", content="second")]}
    print(json.dumps({k: [m.model_dump_json() for m in v] for k, v in written.items()}))
else:
    keys = sorted(store.get_keys())
    print(json.dumps({k: [m.model_dump_json() for m in store.get_messages(k)] for k in keys}))
"""


@pytest.fixture(scope="module")
def reference(llama_index_reference: Callable[[Sequence[str]], ReferencePython]) -> ReferencePython:
    return llama_index_reference([LLAMA_INDEX_AZURE])


@pytest.fixture
def table(azurite_table_endpoint: str) -> Iterator[str]:
    name = f"Li{uuid.uuid4().hex[:16]}"
    yield name
    ours = AzureChatStore.from_connection_string(
        azurite_connection_string(azurite_table_endpoint), chat_table_name=name,
        layout="llama_index",
    )  # fmt: skip
    with ours:
        ours.clear()


def test_we_read_what_llama_index_wrote(
    reference: ReferencePython, azurite_table_endpoint: str, table: str
) -> None:
    """Data written by LlamaIndex's AzureChatStore reads back identically with layout=llama_index.

    If this fails: our reading of its properties, _part_N splitting or metadata drifted.
    """
    connection_string = azurite_connection_string(azurite_table_endpoint)
    written = json.loads(reference.run(REFERENCE_SCRIPT, connection_string, table, "write"))
    store = AzureChatStore.from_connection_string(
        connection_string, chat_table_name=table, layout="llama_index"
    )
    assert sorted(store.get_keys()) == sorted(written)
    for key, lines in written.items():
        assert [message_to_json(m) for m in store.get_messages(key)] == lines
        assert store.count_messages(key) == len(lines)
    assert store.get_messages("user1", offset=-1)[0].additional_kwargs["score"] == 0.25
    # ...and we keep writing into it the way LlamaIndex can read.
    store.add_message("user1", ChatMessage(role="user", content="appended by us"))
    assert store.delete_message("user1", 0) is not None
    seen = json.loads(reference.run(REFERENCE_SCRIPT, connection_string, table, "read"))
    assert seen["user1"] == [message_to_json(m) for m in store.get_messages("user1")]


def test_llama_index_reads_what_we_wrote(
    reference: ReferencePython, azurite_table_endpoint: str, table: str
) -> None:
    """LlamaIndex's AzureChatStore reads what we write with layout=llama_index.

    If this fails: our entities or metadata no longer match LlamaIndex's layout.
    """
    connection_string = azurite_connection_string(azurite_table_endpoint)
    store = AzureChatStore.from_connection_string(
        connection_string, chat_table_name=table, layout="llama_index"
    )
    messages = [
        ChatMessage(role="user", content="q ünïcödé"),
        ChatMessage(role="assistant", content="a" * 40_000 + "😀" * 20_000,
                    additional_kwargs={"tool_calls": [{"id": "t", "args": {"n": [1, 2.5]}}]}),
        ChatMessage(role="user", content="last"),
    ]  # fmt: skip
    store.set_messages("alice", messages[:1])
    store.add_messages("alice", messages[1:])
    store.add_message("bob", ChatMessage(content="hi bob"))
    store.add_message("carol", ChatMessage(content="gone soon"))
    store.delete_messages("carol")
    seen = json.loads(reference.run(REFERENCE_SCRIPT, connection_string, table, "read"))
    assert sorted(seen) == ["alice", "bob"]
    assert seen["alice"] == [message_to_json(m) for m in messages]
    assert seen["bob"] == [message_to_json(ChatMessage(content="hi bob"))]
