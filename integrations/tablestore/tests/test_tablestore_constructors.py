"""LlamaIndex's TablestoreChatStore constructor forms build working stores, on the emulator.

LlamaIndex's signature is ``TablestoreChatStore(tablestore_client, endpoint, instance_name,
access_key_id, access_key_secret, table_name, **kwargs)``, the ``kwargs`` going to
``OTSClient``. Each form creates its table, writes a message and reads it back; an argument
neither the store nor the SDK client knows raises, naming it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.tablestore.testing import TablestoreConnection


@pytest.fixture
def table(raw_client: Any) -> Iterator[str]:
    """A table name no other test uses; whatever the store created under it is dropped after."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    existing = set(raw_client.list_table())
    for created in (name, f"{name}_meta"):
        if created in existing:
            raw_client.delete_table(created)


def _round_trip(store: TablestoreChatStore) -> None:
    store.create_table_if_not_exist()
    store.add_message("user1", ChatMessage(role="user", content="hi"))
    assert [m.content for m in store.get_messages("user1")] == ["hi"]


def test_positional_arguments_follow_llama_index_order(
    tablestore_connection: TablestoreConnection, table: str
) -> None:
    """Connection arguments by position, an OTSClient option by keyword, as in LlamaIndex.

    If this fails: __init__'s positional parameters drifted from LlamaIndex's order, or
    client options no longer reach the SDK client.
    """
    c = tablestore_connection
    store = TablestoreChatStore(
        None, c.endpoint, c.instance_name, c.access_key_id, c.access_key_secret, table,
        socket_timeout=20, max_connection=4,
    )  # fmt: skip
    _round_trip(store)
    assert store.client_options == {"socket_timeout": 20, "max_connection": 4}
    assert store._sync_client().socket_timeout == 20
    store.clear_store()
    assert store.get_keys() == []
    store.close()


def test_injected_client(raw_client: Any, table: str) -> None:
    """tablestore_client= (LlamaIndex's first argument) serves the store.

    If this fails: the injected OTSClient is ignored.
    """
    store = TablestoreChatStore(raw_client, table_name=table)
    _round_trip(store)
    assert store._sync_client() is raw_client


def test_base_module_exports_the_store() -> None:
    """LlamaIndex's documented import path works.

    If this fails: tablestore/base.py is missing or re-exports something else.
    """
    from llama_index.storage.chat_store.tablestore.base import TablestoreChatStore as FromBase

    assert FromBase is TablestoreChatStore


@pytest.mark.parametrize("name", ["session_id", "socket_timout", "ttl"])
def test_unknown_keyword_is_an_error_naming_it(
    tablestore_connection: TablestoreConnection, name: str
) -> None:
    """A keyword neither the store nor OTSClient takes raises (the SDK would ignore it).

    If this fails: unknown keywords are passed to OTSClient unchecked again.
    """
    c = tablestore_connection
    with pytest.raises(TypeError, match=name):
        TablestoreChatStore(
            None, c.endpoint, c.instance_name, c.access_key_id, c.access_key_secret,
            **{name: 1},
        )  # fmt: skip


def test_unknown_client_option_in_client_options_is_an_error(
    tablestore_connection: TablestoreConnection,
) -> None:
    """client_options (what from_dict passes back) is checked the same way.

    If this fails: the client_options path skips the OTSClient option check.
    """
    c = tablestore_connection
    with pytest.raises(TypeError, match="bogus"):
        TablestoreChatStore(
            None, c.endpoint, c.instance_name, c.access_key_id, c.access_key_secret,
            client_options={"bogus": 1},
        )  # fmt: skip
