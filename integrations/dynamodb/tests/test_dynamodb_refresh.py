"""refresh_on_read in both layouts: what a read changes, and what it must never change."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import pytest

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore
from llama_index.storage.chat_store.testing import numbered

LAYOUTS = ["native", "llama_index"]
VERSION = {"native": "Ver", "llama_index": "ChatStoreVersion"}


def control_item(moto: Any, store: DynamoDBChatStore) -> dict[str, Any] | None:
    """The item holding conversation ``k``'s expiry: the meta item, or LlamaIndex's item."""
    key: dict[str, Any] = {"SessionId": {"S": "k"}}
    if store.layout == "native":
        key["Seq"] = {"N": "0"}
    reply = moto.client().get_item(TableName=store.table_name, Key=key, ConsistentRead=True)
    found: dict[str, Any] | None = reply.get("Item")
    return found


def set_expiry(moto: Any, store: DynamoDBChatStore, epoch: int, attribute: str = "TTL") -> None:
    item = control_item(moto, store)
    assert item is not None
    key = {k: item[k] for k in ("SessionId", "Seq") if k in item}
    moto.client().update_item(
        TableName=store.table_name, Key=key, UpdateExpression="SET #a = :v",
        ExpressionAttributeNames={"#a": attribute},
        ExpressionAttributeValues={":v": {"N": str(epoch)}},
    )  # fmt: skip


def expiry(moto: Any, store: DynamoDBChatStore) -> int:
    item = control_item(moto, store)
    assert item is not None
    return int(item["TTL"]["N"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_slide_only_the_expiry(moto: Any, layout: str) -> None:
    store = moto.store(layout, ttl=600, refresh_on_read=True)
    store.add_messages("k", numbered(2))
    version = control_item(moto, store)[VERSION[layout]]  # type: ignore[index]
    for read in (lambda: store.get_messages("k", offset=-1), lambda: store.count_messages("k")):
        soon = int(time.time()) + 10  # as if the last change were long ago
        set_expiry(moto, store, soon)
        read()
        assert expiry(moto, store) >= soon + 580
        assert control_item(moto, store)[VERSION[layout]] == version  # type: ignore[index]
    assert [m.content for m in store.get_messages("k")] == ["m0", "m1"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_without_the_option_leave_the_expiry(moto: Any, layout: str) -> None:
    store = moto.store(layout, ttl=600)
    store.add_messages("k", numbered(2))
    soon = int(time.time()) + 10
    set_expiry(moto, store, soon)
    store.get_messages("k")
    store.count_messages("k")
    assert expiry(moto, store) == soon


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_never_create_or_revive(moto: Any, layout: str) -> None:
    store = moto.store(layout, ttl=600, refresh_on_read=True)
    assert store.get_messages("k") == []
    assert store.count_messages("k") == 0
    assert control_item(moto, store) is None
    store.add_messages("k", numbered(2))
    past = int(time.time()) - 5
    set_expiry(moto, store, past)
    assert store.count_messages("k") == 0
    assert store.get_messages("k") == []
    assert expiry(moto, store) == past
    assert store.get_keys() == []


def test_without_ttl_reads_write_nothing(moto: Any) -> None:
    store = moto.store("native", refresh_on_read=True)
    store.add_messages("k", numbered(2))
    before = control_item(moto, store)
    store.get_messages("k")
    assert control_item(moto, store) == before
    assert "TTL" not in (before or {})


def test_a_refresh_pushes_the_message_items_first(moto: Any) -> None:
    """The conversation's expiry never passes its items' (chunks included)."""
    store = moto.store("native", ttl=600, refresh_on_read=True)
    store.add_messages("k", [ChatMessage(content="s"), ChatMessage(content="x" * 900_000)])
    client = moto.client()
    set_expiry(moto, store, 1, attribute="Floor")  # items' expiries last pushed long ago
    items = client.scan(TableName=store.table_name, ConsistentRead=True)["Items"]
    for item in items:
        if item["Seq"]["N"] != "0":
            client.update_item(
                TableName=store.table_name,
                Key={"SessionId": item["SessionId"], "Seq": item["Seq"]},
                UpdateExpression="SET #t = :v", ExpressionAttributeNames={"#t": "TTL"},
                ExpressionAttributeValues={":v": {"N": str(int(time.time()) + 20)}},
            )  # fmt: skip
    set_expiry(moto, store, int(time.time()) + 10)
    store.count_messages("k")
    conversation = expiry(moto, store)
    assert conversation >= time.time() + 590
    items = client.scan(TableName=store.table_name, ConsistentRead=True)["Items"]
    assert len(items) == 5  # meta, two message items, two chunk items
    assert all(int(i["TTL"]["N"]) >= conversation for i in items)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_refreshing_readers_beside_writers_lose_nothing(moto: Any, layout: str) -> None:
    store = moto.store(layout, ttl=600, refresh_on_read=True)
    store.add_message("k", ChatMessage(content="first"))
    writers, per_writer = 3, 15
    barrier = threading.Barrier(writers + 1)
    done = threading.Event()

    def write(w: int) -> None:
        barrier.wait(timeout=30)
        for i in range(per_writer):
            store.add_message("k", ChatMessage(content=f"w{w}-{i}"))

    def read() -> None:
        barrier.wait(timeout=30)
        while not done.is_set():
            set_expiry(moto, store, int(time.time()) + 10)  # so that every read refreshes
            store.get_messages("k", offset=-3)
            store.count_messages("k")

    with concurrent.futures.ThreadPoolExecutor(writers + 1) as pool:
        reader = pool.submit(read)
        list(pool.map(write, range(writers)))
        done.set()
        reader.result()
    texts = [m.content for m in store.get_messages("k")]
    assert len(texts) == 1 + writers * per_writer
    for w in range(writers):
        assert [t for t in texts if t and t.startswith(f"w{w}-")] == [
            f"w{w}-{i}" for i in range(per_writer)
        ]


def test_refresh_on_read_in_urls_and_dumps(moto: Any) -> None:
    made = moto.store("native")
    base = f"dynamodb://{made.table_name}?region=us-east-1&endpoint_url={moto.url}&ttl=60"
    secrets = {"aws_access_key_id": "testing", "aws_secret_access_key": moto.secret}
    on = DynamoDBChatStore.from_url(base + "&refresh_on_read=true", **secrets)
    off = DynamoDBChatStore.from_url(base + "&refresh_on_read=false", **secrets)
    assert (on.refresh_on_read, off.refresh_on_read) == (True, False)
    assert on.to_dict()["refresh_on_read"] is True
