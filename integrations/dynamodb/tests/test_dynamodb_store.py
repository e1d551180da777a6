"""DynamoDB-specific behaviour: layouts, limits, large batches, TTL bookkeeping, URLs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from typing import Any

import pytest

from llama_index.storage.chat_store.core import (
    ChatMessage,
    ConfigurationError,
    CorruptDataError,
    InvalidKeyError,
    PayloadTooLargeError,
    message_to_json,
)
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore
from llama_index.storage.chat_store.dynamodb.base import DynamoDBChatStore as LlamaIndexImport
from llama_index.storage.chat_store.testing import numbered, tricky_messages


def texts(messages: list[ChatMessage] | None) -> list[str | None]:
    return [m.content for m in messages or []]


def items_of(moto: Any, store: DynamoDBChatStore) -> list[dict[str, Any]]:
    return moto.client().scan(TableName=store.table_name, ConsistentRead=True)["Items"]


def test_llama_index_import_path_is_the_same_class() -> None:
    assert LlamaIndexImport is DynamoDBChatStore
    store = LlamaIndexImport("EXAMPLE_TABLE", profile_name=None)
    assert store.table_name == "EXAMPLE_TABLE"


def test_layout_auto_detects_the_key_schema(moto: Any) -> None:
    native = moto.store("native")
    theirs = moto.store("llama_index")
    for made in (native, theirs):
        auto = DynamoDBChatStore(
            table_name=made.table_name, endpoint_url=moto.url, **moto.credentials
        )
        auto.add_message("k", ChatMessage(content="x"))
    assert {i["SessionId"]["S"] for i in items_of(moto, theirs)} == {"k"}
    assert "History" in items_of(moto, theirs)[0]
    assert len(items_of(moto, native)) == 2  # the meta item and one message item


def test_layout_mismatch_is_a_configuration_error(moto: Any) -> None:
    theirs = moto.store("llama_index")
    wrong = DynamoDBChatStore(
        table_name=theirs.table_name, endpoint_url=moto.url, layout="native", **moto.credentials
    )
    with pytest.raises(ConfigurationError, match="no sort key"):
        wrong.count_messages("k")


def test_missing_table_names_it(moto: Any) -> None:
    store = DynamoDBChatStore(table_name="no-such-table", endpoint_url=moto.url, **moto.credentials)
    with pytest.raises(ConfigurationError, match="no-such-table"):
        store.get_messages("k")


def test_no_ttl_native_round_trip_and_windows(native_store: DynamoDBChatStore, moto: Any) -> None:
    native_store.add_messages("k", numbered(30))
    assert texts(native_store.get_messages("k", offset=-3)) == ["m27", "m28", "m29"]
    assert texts(native_store.get_messages("k", offset=5, limit=2)) == ["m5", "m6"]
    assert not any("TTL" in item for item in items_of(moto, native_store))
    native_store.set_messages("k", tricky_messages())
    assert [message_to_json(m) for m in native_store.get_messages("k")] == [
        message_to_json(m) for m in tricky_messages()
    ]


def test_three_hundred_messages_round_trip(native_store: DynamoDBChatStore) -> None:
    many = numbered(300)
    native_store.set_messages("many", many)
    assert native_store.count_messages("many") == 300
    assert texts(native_store.get_messages("many", offset=-20)) == [
        f"m{i}" for i in range(280, 300)
    ]


def test_two_thousand_messages_of_2kb_round_trip(native_store: DynamoDBChatStore) -> None:
    """10x LlamaIndex's 400 KB ceiling: 2,000 messages of 2 KB in one conversation."""
    body = "x" * 2000
    batch = [ChatMessage(content=f"{i:04d}{body}") for i in range(2000)]
    for start in range(0, 2000, 500):
        native_store.add_messages("long", batch[start : start + 500])
    assert native_store.count_messages("long") == 2000
    last = native_store.get_messages("long", offset=-20)
    assert [m.content[:4] for m in last] == [f"{i:04d}" for i in range(1980, 2000)]  # type: ignore[index]
    everything = native_store.get_messages("long")
    assert [m.content for m in everything] == [m.content for m in batch]


def test_large_batches_and_replaces_are_atomic_and_chunked(native_store: DynamoDBChatStore) -> None:
    """Over 100 items take the leased batch / new-generation paths (and BatchWriteItem <= 25)."""
    native_store.add_messages("k", numbered(150))
    native_store.add_messages("k", numbered(120, start=150))
    assert native_store.count_messages("k") == 270
    native_store.add_message("k", ChatMessage(content="mid"), idx=135)
    assert texts(native_store.get_messages("k", offset=134, limit=3)) == ["m134", "mid", "m135"]
    assert native_store.delete_message("k", 135).content == "mid"  # type: ignore[union-attr]
    native_store.set_messages("k", numbered(130, prefix="n"))
    assert texts(native_store.get_messages("k")) == [f"n{i}" for i in range(130)]
    assert texts(native_store.delete_oldest_messages("k", 110)) == [f"n{i}" for i in range(110)]
    assert native_store.count_messages("k") == 20


def test_replace_is_atomic_for_concurrent_readers(native_store: DynamoDBChatStore) -> None:
    old, new = numbered(150, prefix="old"), numbered(140, prefix="new")
    native_store.set_messages("k", old)
    seen: list[set[str]] = []

    def read() -> None:
        for _ in range(15):
            prefixes = {t[:3] for t in texts(native_store.get_messages("k")) if t}
            seen.append(prefixes)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reader = pool.submit(read)
        for i in range(3):
            native_store.set_messages("k", new if i % 2 == 0 else old)
        reader.result()
    assert all(len(prefixes) == 1 for prefixes in seen), seen


def test_message_over_the_item_limit(moto: Any) -> None:
    """LlamaIndex's layout refuses it before any write; the recommended one splits it."""
    big = ChatMessage(content="x" * 410_000)
    theirs = moto.store("llama_index")
    theirs.add_message("k", ChatMessage(content="kept"))
    with pytest.raises(PayloadTooLargeError, match="400 KB"):
        theirs.add_message("k", big)
    with pytest.raises(PayloadTooLargeError):
        theirs.add_messages("k", [ChatMessage(content="a"), big])
    with pytest.raises(PayloadTooLargeError):
        theirs.set_messages("k", [big])
    assert texts(theirs.get_messages("k")) == ["kept"]
    native = moto.store("native")
    native.add_message("k", ChatMessage(content="y" * 390_000))
    native.add_message("k", big)
    assert [m.content for m in native.get_messages("k")] == ["y" * 390_000, big.content]


def test_llama_index_layout_refuses_growth_past_one_item(llama_store: DynamoDBChatStore) -> None:
    llama_store.add_messages("k", [ChatMessage(content="z" * 100_000) for _ in range(3)])
    with pytest.raises(PayloadTooLargeError, match="recommended table"):
        llama_store.add_message("k", ChatMessage(content="z" * 100_000))
    assert llama_store.count_messages("k") == 3


def test_key_over_the_partition_key_limit(native_store: DynamoDBChatStore) -> None:
    native_store.add_message("é" * 1024, ChatMessage(content="2048 bytes"))
    with pytest.raises(InvalidKeyError):
        native_store.add_message("k" * 2049, ChatMessage(content="x"))


def test_numbers_never_come_back_as_decimal(moto: Any) -> None:
    message = ChatMessage(content="n", additional_kwargs={"i": 3, "f": 1.0, "big": 10**20})
    for layout in ("native", "llama_index"):
        store = moto.store(layout)
        store.add_message("k", message)
        got = store.get_messages("k")[0].additional_kwargs
        assert got == {"i": 3, "f": 1.0, "big": 10**20}
        assert type(got["i"]) is int
        assert type(got["f"]) is float


def test_corrupt_meta_item_raises(native_store: DynamoDBChatStore, moto: Any) -> None:
    native_store.add_message("k", ChatMessage(content="x"))
    moto.client().update_item(
        TableName=native_store.table_name,
        Key={"SessionId": {"S": "k"}, "Seq": {"N": "0"}},
        UpdateExpression="SET #f = :bad",
        ExpressionAttributeNames={"#f": "First"},
        ExpressionAttributeValues={":bad": {"S": "not a number"}},
    )
    with pytest.raises(CorruptDataError, match="'k'"):
        native_store.get_messages("k")


def test_expired_items_keep_a_ttl_no_earlier_than_the_conversation(moto: Any) -> None:
    store = moto.store("native", ttl=600)
    store.add_messages("k", numbered(3))
    items = items_of(moto, store)
    meta = next(i for i in items if i["Seq"]["N"] == "0")
    messages = [i for i in items if i["Seq"]["N"] != "0"]
    assert all(int(m["TTL"]["N"]) >= int(meta["TTL"]["N"]) for m in messages)
    assert int(meta["Floor"]["N"]) >= int(meta["TTL"]["N"])


def test_from_url(moto: Any) -> None:
    made = moto.store("native")
    url = f"dynamodb://{made.table_name}?region=us-east-1&endpoint_url={moto.url}&ttl=60"
    store = DynamoDBChatStore.from_url(
        url, aws_access_key_id="testing", aws_secret_access_key=moto.secret
    )
    assert (store.ttl, store.ttl_seconds, store.region_name) == (60, 60, "us-east-1")
    store.add_message("k", ChatMessage(content="x"))
    assert made.count_messages("k") == 1
    with pytest.raises(ConfigurationError, match="unknown"):
        DynamoDBChatStore.from_url("dynamodb://t?colour=blue")


def test_dump_carries_no_secret(moto: Any) -> None:
    store = DynamoDBChatStore(
        table_name="t", aws_secret_access_key="s3cr3t", aws_session_token="t0ken",
        session_kwargs={"aws_secret_access_key": "s3cr3t"}, ttl_seconds=5,
    )  # fmt: skip
    dumped = json.dumps(store.to_dict())
    assert "s3cr3t" not in dumped
    assert "t0ken" not in dumped
    assert "s3cr3t" not in repr(store)
    assert store.to_dict()["ttl"] == 5


def test_async_does_not_block_the_event_loop(native_store: DynamoDBChatStore) -> None:
    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await native_store.aadd_messages("k", numbered(150))
        await native_store.aget_messages("k")
        ticker.cancel()
        return ticks

    assert asyncio.run(main()) > 10


def test_core_registry_builds_the_store(moto: Any) -> None:
    from llama_index.storage.chat_store.core import chat_store_from_dict, chat_store_from_url

    made = moto.store("native")
    url = f"dynamodb://{made.table_name}?region=us-east-1&endpoint_url={moto.url}"
    store = chat_store_from_url(url, aws_access_key_id="testing", aws_secret_access_key=moto.secret)
    assert isinstance(store, DynamoDBChatStore)
    store.add_message("k", ChatMessage(content="x"))
    rebuilt = chat_store_from_dict(store.to_dict(), aws_secret_access_key=moto.secret)
    assert isinstance(rebuilt, DynamoDBChatStore)
    assert rebuilt.count_messages("k") == 1
