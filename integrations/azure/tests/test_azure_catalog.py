"""The native layout's conversation catalog beyond the suite, on a real Azurite.

Old meta entities (written before the catalog), stale index entities, key order where
Azure's own RowKey order differs from code point order, and the long keys sorted in groups
(set_metadata racing appends from several stores is the suite's).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import pytest
from azure.data.tables import TableClient, UpdateMode

from llama_index.storage.chat_store.azure import AzureChatStore
from llama_index.storage.chat_store.azure._catalog import INDEXED
from llama_index.storage.chat_store.azure._codec import encode_key, order_key
from llama_index.storage.chat_store.azure._native import KEYS_PARTITION, ORDER_PARTITION
from llama_index.storage.chat_store.azure.testing import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_connection_string,
)
from llama_index.storage.chat_store.core import MAX_KEY_BYTES, ChatMessage, CorruptDataError
from llama_index.storage.chat_store.core.catalog import MAX_METADATA_BYTES
from llama_index.storage.chat_store.testing.catalog import walk_catalog


@pytest.fixture
def table(azurite_table_endpoint: str) -> Iterator[str]:
    name = f"C{uuid.uuid4().hex[:16]}"
    yield name
    with TableClient.from_connection_string(
        azurite_connection_string(azurite_table_endpoint), name
    ) as client:
        client.delete_table()


@pytest.fixture
def new_store(azurite_table_endpoint: str, table: str) -> Callable[[], AzureChatStore]:
    def make() -> AzureChatStore:
        return AzureChatStore.from_account_and_key(
            AZURITE_ACCOUNT, AZURITE_KEY, endpoint=azurite_table_endpoint, chat_table_name=table
        )

    return make


@pytest.fixture
def raw(azurite_table_endpoint: str, table: str) -> Iterator[TableClient]:
    """The table itself, to write what earlier versions (or a crash) left behind."""
    with TableClient.from_connection_string(
        azurite_connection_string(azurite_table_endpoint), table
    ) as client:
        yield client


def _message(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def _make_pre_catalog(raw: TableClient, keys: list[str]) -> None:
    """Turn the table into what the native layout wrote before the catalog."""
    for key in keys:
        meta = dict(raw.get_entity(encode_key(key), "meta"))
        for name in ("Created", "Updated", "Metadata"):
            meta.pop(name, None)
        raw.upsert_entity(meta, mode=UpdateMode.REPLACE)
    for entity in raw.query_entities("PartitionKey eq @pk", parameters={"pk": ORDER_PARTITION}):
        raw.delete_entity(ORDER_PARTITION, entity["RowKey"])


def test_old_meta_entities_read_as_unknown_until_a_change(
    new_store: Callable[[], AzureChatStore], raw: TableClient
) -> None:
    """A conversation from before the catalog is listed (indexed once), times None, metadata {}."""
    with new_store() as writer:
        writer.add_messages("old/a", [_message("1"), _message("2")])
        writer.add_message("old/b", _message("1"))
    _make_pre_catalog(raw, ["old/a", "old/b"])
    with new_store() as store:
        info = store.get_conversation("old/a")
        assert info is not None
        assert (info.message_count, info.created_at, info.updated_at, info.metadata) == (
            2, None, None, {},
        )  # fmt: skip
        assert walk_catalog(store, "old/", limit=1) == [
            "old/a",
            "old/b",
        ]  # indexed by the first listing
        assert raw.get_entity(ORDER_PARTITION, INDEXED) is not None
        store.add_message("old/a", _message("3"))
        changed = store.get_conversation("old/a")
        assert changed is not None
        assert changed.created_at is None  # not known: stays so
        assert changed.updated_at is not None
        info = store.set_metadata("old/b", {"title": "kept"})
        assert info.metadata == {"title": "kept"}
        assert info.message_count == 1
    with new_store() as other:  # a second store finds the marker: nothing to index again
        assert [c.key for c in other.list_conversations(prefix="old/").conversations] == [
            "old/a", "old/b",
        ]  # fmt: skip


def test_stale_index_entities_are_skipped(
    new_store: Callable[[], AzureChatStore], raw: TableClient
) -> None:
    """Index entities of empty or absent conversations (a crash between commit and unlisting)."""
    with new_store() as store:
        for key in ("s1", "s3", "s5"):
            store.add_message(key, _message("x"))
        store.add_message("s4", _message("x"))
        store.delete_messages("s4")  # its meta entity stays, empty
        for key in ("s0", "s2", "s4", "s6"):  # s0, s2, s6: no meta entity at all
            for pk, rk in ((ORDER_PARTITION, order_key(key)), (KEYS_PARTITION, encode_key(key))):
                raw.upsert_entity({"PartitionKey": pk, "RowKey": rk, "Key": key})
        for limit in (1, 2, 3, 100):
            assert walk_catalog(store, "s", limit=limit) == ["s1", "s3", "s5"]
        page = store.list_conversations(prefix="s", limit=3)
        assert [c.key for c in page.conversations] == ["s1", "s3", "s5"]
        assert page.next_after == "s5"  # an index entity follows: the next page tells
        assert store.list_conversations(prefix="s", after="s5").next_after is None
        store.add_message("s2", _message("back"))  # a stale entity's key comes back
        assert walk_catalog(store, "s", limit=2) == ["s1", "s2", "s3", "s5"]


def test_listing_follows_code_points_where_azure_order_differs(
    new_store: Callable[[], AzureChatStore],
) -> None:
    """Escaped characters, BMP above the surrogates vs. astral, and keys over 825 bytes.

    Azure compares RowKeys by UTF-16 code unit ("\\U0001F600" before "\\uE000") and
    encode_key escapes "/" as "%2F" (before "-"): the order index must not.
    """
    long = "L" * 830
    keys = ["a-", "a/", "a.", "a%", "a#b", "\ue000", "\U0001f600", "\uffee", "a\u2028", "a"]
    keys += [long + "b", long + "a", long + "a" * 100, long[:-1], "L" * (MAX_KEY_BYTES - 4) + "😀"]
    with new_store() as store:
        for key in keys:
            store.add_message(key, _message(key[:10]))
        assert walk_catalog(store, limit=3) == sorted(keys)
        assert walk_catalog(store, limit=100) == sorted(keys)
        assert walk_catalog(store, "a", 3) == sorted(k for k in keys if k.startswith("a"))
        assert walk_catalog(store, long, 3) == sorted(k for k in keys if k.startswith(long))
        assert walk_catalog(store, long + "a", limit=1) == [long + "a", long + "a" * 100]
        at = sorted(keys).index(long + "a")
        after = store.list_conversations(after=long + "a", limit=2)
        assert [c.key for c in after.conversations] == sorted(keys)[at + 1 : at + 3]
        store.delete_messages(long + "a")
        assert walk_catalog(store, "L", 3) == sorted(
            k for k in keys if k.startswith("L") and k != long + "a"
        )

        async def walk_async() -> list[str]:
            page = await store.alist_conversations(limit=100)
            return [c.key for c in page.conversations]

        assert asyncio.run(walk_async()) == sorted(k for k in keys if k != long + "a")


def test_metadata_whose_json_outgrows_a_string_property(
    new_store: Callable[[], AzureChatStore], raw: TableClient
) -> None:
    """Names escaped six-fold in JSON fit the 8 KiB limit but not a 64 KiB string property."""
    names = {chr(1) * 1000 + str(i): 0 for i in range(7)}  # about 7,000 bytes, 42,000 in JSON
    with new_store() as store:
        store.add_message("k", _message("x"))
        assert store.set_metadata("k", names).metadata == names
        assert isinstance(raw.get_entity(encode_key("k"), "meta")["Metadata"], bytes)
        store.add_message("k", _message("y"))
        got = store.get_conversation("k")
        assert got is not None
        assert got.metadata == names
        assert store.set_metadata("k", dict.fromkeys(names)).metadata == {}
        assert "Metadata" not in raw.get_entity(encode_key("k"), "meta")
        assert sum(len(n) + 1 for n in names) <= MAX_METADATA_BYTES


@pytest.mark.parametrize(("name", "value"), [("Metadata", "[1, 2]"), ("Created", "yesterday")])
def test_unreadable_catalog_properties_are_corrupt_data(
    new_store: Callable[[], AzureChatStore], raw: TableClient, name: str, value: str
) -> None:
    """A meta entity whose catalog properties are not what we write: CorruptDataError, named."""
    with new_store() as store:
        store.add_message("bad", _message("x"))
        raw.update_entity({"PartitionKey": encode_key("bad"), "RowKey": "meta", name: value})
        with pytest.raises(CorruptDataError, match="bad"):
            store.get_conversation("bad")
        with pytest.raises(CorruptDataError, match="bad"):
            store.list_conversations()
        store.set_messages("bad", [])  # the remedy the error names
        assert store.list_conversations().conversations == []
