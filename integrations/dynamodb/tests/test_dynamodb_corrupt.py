"""Corrupt message items stay deletable on both layouts, and errors name key and position."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llama_index.storage.chat_store.core import (
    ChatMessage,
    CorruptDataError,
    SerializationError,
)
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore

from .conftest import Moto

_ABC = [ChatMessage(content=c) for c in "abc"]


def _native_item(moto: Moto, store: DynamoDBChatStore, key: str, position: int) -> dict[str, Any]:
    items = moto.client().query(
        TableName=store.table_name,
        KeyConditionExpression="SessionId = :k AND Seq > :zero",
        ExpressionAttributeValues={":k": {"S": key}, ":zero": {"N": "0"}},
        ConsistentRead=True,
    )["Items"]
    item: dict[str, Any] = items[position]
    return item


NATIVE_CORRUPTIONS: dict[str, tuple[Callable[[dict[str, Any]], None], Any]] = {
    # what is done to the item at position 1, and the data the error then holds
    "binary": (lambda item: item.update(Message={"B": b"\x00\xff"}), b"\x00\xff"),
    "no message": (lambda item: item.pop("Message"), None),
    "not json": (lambda item: item.update(Message={"S": "{not json"}), "{not json"),
}

REMOVALS: dict[str, tuple[Callable[[DynamoDBChatStore], Any], int]] = {
    # a removal that takes position 1, and how many messages are left after it
    "delete_message": (lambda s: s.delete_message("k", 1), 2),
    "delete_message from the end": (lambda s: s.delete_message("k", -2), 2),
    "delete_oldest_messages": (lambda s: s.delete_oldest_messages("k", 2), 1),
    "delete_messages": (lambda s: s.delete_messages("k"), 0),
}


@pytest.mark.parametrize("corruption", sorted(NATIVE_CORRUPTIONS))
@pytest.mark.parametrize("removal", sorted(REMOVALS))
def test_native_corrupt_items_are_removed_then_named(
    moto: Moto, native_store: DynamoDBChatStore, corruption: str, removal: str
) -> None:
    """A removal removes a corrupt item like any other, then raises CorruptDataError naming
    the key and position, the stored data attached; reads name them and change nothing."""
    corrupt, data = NATIVE_CORRUPTIONS[corruption]
    native_store.add_messages("k", _ABC)
    item = _native_item(moto, native_store, "k", 1)
    corrupt(item)
    moto.client().put_item(TableName=native_store.table_name, Item=item)
    with pytest.raises(CorruptDataError) as read:
        native_store.get_messages("k")
    assert (read.value.key, read.value.position) == ("k", 1)
    assert native_store.count_messages("k") == 3

    call, left = REMOVALS[removal]
    with pytest.raises(CorruptDataError, match="removed") as info:
        call(native_store)
    assert (info.value.key, info.value.position, info.value.data) == ("k", 1, data)
    assert native_store.count_messages("k") == left
    kept = [m.content for m in native_store.get_messages("k")]
    assert kept == {2: ["a", "c"], 1: ["c"], 0: []}[left]
    assert ("k" in native_store.get_keys()) == bool(left)


def test_native_corrupt_item_never_blocks_removing_its_neighbours(
    moto: Moto, native_store: DynamoDBChatStore
) -> None:
    native_store.add_messages("k", _ABC)
    item = _native_item(moto, native_store, "k", 1)
    item["Message"] = {"B": b"\x00"}
    moto.client().put_item(TableName=native_store.table_name, Item=item)
    assert native_store.delete_last_message("k") == ChatMessage(content="c")
    assert native_store.delete_message("k", 0) == ChatMessage(content="a")
    with pytest.raises(CorruptDataError, match="removed") as info:
        native_store.delete_last_message("k")
    assert (info.value.key, info.value.position) == ("k", 0)
    assert native_store.count_messages("k") == 0


@pytest.mark.parametrize("removal", sorted(REMOVALS))
def test_llama_index_layout_corrupt_messages_are_removed_then_named(
    moto: Moto, llama_store: DynamoDBChatStore, removal: str
) -> None:
    llama_store.add_messages("k", _ABC)
    moto.client().update_item(
        TableName=llama_store.table_name,
        Key={"SessionId": {"S": "k"}},
        UpdateExpression="SET History[1] = :bad",
        ExpressionAttributeValues={":bad": {"M": {"role": {"L": []}, "blocks": {"N": "4"}}}},
    )
    with pytest.raises(CorruptDataError) as read:
        llama_store.get_messages("k")
    assert "'k' position 1" in str(read.value)

    call, left = REMOVALS[removal]
    with pytest.raises(CorruptDataError, match="removed") as info:
        call(llama_store)
    assert (info.value.key, info.value.position) == ("k", 1)
    assert isinstance(info.value.data, str)
    assert "blocks" in info.value.data
    assert [m.content for m in llama_store.get_messages("k")] == {
        2: ["a", "c"], 1: ["c"], 0: []
    }[left]  # fmt: skip
    assert ("k" in llama_store.get_keys()) == bool(left)


@pytest.mark.parametrize("depth", [400, 5000])
@pytest.mark.parametrize("layout", ["native", "llama_index"])
def test_too_deep_nesting_is_a_serialization_error(moto: Moto, layout: str, depth: int) -> None:
    deep: Any = "x"
    for _ in range(depth):
        deep = {"a": deep}
    message = ChatMessage(content="hi", additional_kwargs={"deep": deep})
    store = moto.store(layout)
    for write in (
        lambda: store.add_message("k", message),
        lambda: store.add_message("k", message, idx=0),
        lambda: store.add_messages("k", [message]),
        lambda: store.set_messages("k", [message]),
    ):
        with pytest.raises(SerializationError):
            write()
    assert store.count_messages("k") == 0
    store.close()
