"""AzureChatStore data safety: awkward keys. Everything runs on a real Azurite."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.data.tables import TableClient

from llama_index.storage.chat_store.azure import AzureChatStore
from llama_index.storage.chat_store.azure._codec import decode_key, encode_key
from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.testing.samples import numbered
from llama_index.storage.chat_store.testing.services import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_connection_string,
)

KEY = "conv"
LAYOUTS = ["native", "llama_index"]


@pytest.fixture
def table(azurite_table_endpoint: str) -> Iterator[str]:
    name = f"Z{uuid.uuid4().hex[:16]}"
    yield name
    for suffix in ("", "Meta"):
        client = TableClient.from_connection_string(
            azurite_connection_string(azurite_table_endpoint), name + suffix
        )
        with client:
            client.delete_table()


@pytest.fixture
def make_store(azurite_table_endpoint: str, table: str) -> Iterator[Callable[..., AzureChatStore]]:
    """New instances over one table, each with its own memory of meta entities."""
    made: list[AzureChatStore] = []

    def make(layout: str = "native") -> AzureChatStore:
        made.append(AzureChatStore.from_account_and_key(
            AZURITE_ACCOUNT, AZURITE_KEY, endpoint=azurite_table_endpoint,
            chat_table_name=table, metadata_table_name=table + "Meta", layout=layout,
        ))  # fmt: skip
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def raw(azurite_table_endpoint: str, table: str) -> Iterator[TableClient]:
    """The store's table, written directly (to corrupt it)."""
    client = TableClient.from_connection_string(
        azurite_connection_string(azurite_table_endpoint), table
    )
    with client:
        yield client


def _texts(messages: Any) -> list[str]:
    if messages is None:
        return []
    if isinstance(messages, ChatMessage):
        messages = [messages]
    return [m.content or "" for m in messages]


# -- item 11: keys Azurite accepts but cannot delete -----------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("key", ["a\u2028b", "\u2029", "x%u2028y\u2028"])
def test_line_separator_keys_are_written_read_and_deleted(
    make_store: Callable[..., AzureChatStore], layout: str, key: str
) -> None:
    """Keys holding U+2028/U+2029 round-trip and can be deleted (encoded reversibly).

    If this fails: the separators reach a PartitionKey, which Azurite stores but refuses
    to delete (400 InvalidInput), so the conversation can never be removed.
    """
    store = make_store(layout)
    store.add_messages(key, numbered(3))
    assert store.get_keys() == [key]
    assert _texts(store.delete_last_message(key)) == ["m2"]
    assert _texts(store.delete_message(key, 0)) == ["m0"]
    assert _texts(store.delete_messages(key)) == ["m1"]
    assert store.get_keys() == []
    store.add_message(key, ChatMessage(content="again"))
    store.clear()
    assert store.get_keys() == []


def test_key_encoding_is_reversible_and_addressable() -> None:
    """Every escaped form decodes back; no separator reaches a PartitionKey."""
    for key in ["a\u2028b\u2029", "%u2028", "%25", "%u20", "/%2028\u2028", "plain"]:
        encoded = encode_key(key)
        assert "\u2028" not in encoded
        assert "\u2029" not in encoded
        assert decode_key(encoded) == key
    assert encode_key("plain") == "plain"
