"""Messages over DynamoDB's 400 KB item limit, split across items in the recommended layout."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import pytest

from llama_index.storage.chat_store.core import (
    ChatMessage,
    CorruptDataError,
    PayloadTooLargeError,
    message_to_json,
)
from llama_index.storage.chat_store.dynamodb import MAX_MESSAGE_BYTES, DynamoDBChatStore
from llama_index.storage.chat_store.testing import numbered

MB = 1_000_000


def big(label: str, size: int) -> ChatMessage:
    """A message of about ``size`` bytes of JSON whose text mixes 1-, 2- and 4-byte characters."""
    unit = "aé🙂"  # 7 bytes: cuts at item boundaries must never split a character
    return ChatMessage(role="assistant", content=f"{label}:" + unit * (size // 7))


def jsons(messages: list[ChatMessage] | None) -> list[str]:
    return [message_to_json(m) for m in messages or []]


def labels(messages: list[ChatMessage] | None) -> list[str]:
    return [str(m.content).split(":")[0] for m in messages or []]


def items(moto: Any, store: DynamoDBChatStore) -> list[dict[str, Any]]:
    client, found, params = moto.client(), [], {"TableName": store.table_name}
    while True:
        page = client.scan(ConsistentRead=True, **params)
        found.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return found
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def left(moto: Any, store: DynamoDBChatStore) -> list[dict[str, Any]]:
    """The items of the table but the meta items of removed conversations (no ``Gen``).

    Those stay, keeping the ids of the changes that removed them, until they expire.
    """
    return [i for i in items(moto, store) if i["Seq"]["N"] != "0" or "Gen" in i]


def chunk_items(moto: Any, store: DynamoDBChatStore) -> list[dict[str, Any]]:
    return [i for i in items(moto, store) if int(i["Seq"]["N"]) < 0]


def meta_item(moto: Any, store: DynamoDBChatStore) -> dict[str, Any]:
    return next(i for i in items(moto, store) if i["Seq"]["N"] == "0")


def referenced_chunks(moto: Any, store: DynamoDBChatStore) -> int:
    """How many chunk items the message items of the table point at."""
    return sum(int(i["Parts"]["N"]) - 1 for i in items(moto, store) if "Parts" in i)


@pytest.fixture
def store(moto: Any) -> DynamoDBChatStore:
    made: DynamoDBChatStore = moto.store("native", ttl=86_400)
    return made


def test_one_and_three_mb_messages_round_trip_through_windows_and_pops(
    store: DynamoDBChatStore, moto: Any
) -> None:
    one, three = big("one", MB), big("three", 3 * MB)
    chat = [ChatMessage(content="s0:"), one, ChatMessage(content="s2:"), three]
    store.add_messages("k", chat)
    store.add_message("k", ChatMessage(content="s4:"))
    chat.append(ChatMessage(content="s4:"))
    assert store.count_messages("k") == 5
    assert jsons(store.get_messages("k")) == jsons(chat)
    assert jsons(store.get_messages("k", offset=1, limit=3)) == jsons(chat[1:4])
    assert jsons(store.get_messages("k", offset=-2)) == jsons(chat[3:])
    assert labels(store.get_messages("k", offset=3, limit=1)) == ["three"]
    # 1 MB: 3 items, 3 MB: 8 items (parts of at most ~397 KB)
    assert len(chunk_items(moto, store)) == referenced_chunks(moto, store) == 2 + 7

    removed = store.delete_message("k", -2)  # the 3 MB one: the tail moves down
    assert message_to_json(removed) == message_to_json(three)  # type: ignore[arg-type]
    assert labels(store.get_messages("k")) == ["s0", "one", "s2", "s4"]
    assert len(chunk_items(moto, store)) == referenced_chunks(moto, store) == 2

    store.add_message("k", three, idx=0)  # the head of the conversation moves
    store.add_message("k", ChatMessage(content="s1:"), idx=2)  # moves the 1 MB one's head
    assert labels(store.get_messages("k")) == ["three", "s0", "s1", "one", "s2", "s4"]
    assert jsons(store.get_messages("k", offset=3, limit=1)) == jsons([one])

    assert labels([store.delete_message("k", 3)]) == ["one"]  # type: ignore[list-item]
    assert jsons(store.delete_oldest_messages("k", 1)) == jsons([three])
    assert labels(store.get_messages("k")) == ["s0", "s1", "s2", "s4"]
    assert chunk_items(moto, store) == []

    store.add_messages("k", [one, three])
    popped = store.delete_last_message("k")
    assert message_to_json(popped) == message_to_json(three)  # type: ignore[arg-type]
    assert jsons(store.delete_messages("k")) == jsons(
        [ChatMessage(content=f"s{i}:") for i in (0, 1, 2, 4)] + [one]
    )
    assert left(moto, store) == []


def test_messages_beyond_one_transaction_round_trip(store: DynamoDBChatStore, moto: Any) -> None:
    """Over 4 MB (a transaction's limit), the chunks are written first, then made visible."""
    five = big("five", 5 * MB)
    store.add_message("k", ChatMessage(content="s0:"))
    store.add_message("k", five)
    assert jsons(store.get_messages("k", offset=-1)) == jsons([five])
    replacement = [big(f"r{i}", MB) for i in range(5)]  # 5 MB in one replace
    store.set_messages("k", replacement)
    assert jsons(store.get_messages("k")) == jsons(replacement)
    assert len(chunk_items(moto, store)) == referenced_chunks(moto, store) == 5 * 2


def test_a_message_at_the_bound_round_trips(store: DynamoDBChatStore) -> None:
    envelope = len(message_to_json(ChatMessage(content="")).encode())
    largest = ChatMessage(content="x" * (MAX_MESSAGE_BYTES - envelope))
    assert len(message_to_json(largest).encode()) == MAX_MESSAGE_BYTES
    store.add_message("k", largest)
    assert jsons(store.get_messages("k")) == jsons([largest])


def test_a_message_just_over_the_bound_writes_nothing(store: DynamoDBChatStore, moto: Any) -> None:
    store.add_messages("k", [ChatMessage(content="kept"), big("kept", MB)])
    before = items(moto, store)
    envelope = len(message_to_json(ChatMessage(content="")).encode())
    over = ChatMessage(content="x" * (MAX_MESSAGE_BYTES - envelope + 1))
    with pytest.raises(PayloadTooLargeError, match="16 MB"):
        store.add_message("k", over)
    with pytest.raises(PayloadTooLargeError):
        store.add_messages("k", [big("a", 2 * MB), over])
    with pytest.raises(PayloadTooLargeError):
        store.add_message("k", over, idx=0)
    with pytest.raises(PayloadTooLargeError):
        store.set_messages("k", [over])
    assert items(moto, store) == before


def test_concurrent_appends_and_pops_of_large_messages(moto: Any) -> None:
    """Writers mixing large and small messages, beside refreshing readers, lose nothing."""
    store = moto.store("native", ttl=600, refresh_on_read=True)
    writers, per_writer = 3, 4
    barrier = threading.Barrier(writers + 1)
    done = threading.Event()

    def message(w: int, i: int) -> ChatMessage:
        return big(f"w{w}-{i}", 600_000) if i % 2 == 0 else ChatMessage(content=f"w{w}-{i}:")

    def write(w: int) -> None:
        barrier.wait(timeout=30)
        for i in range(per_writer):
            store.add_message("k", message(w, i))

    def read() -> int:
        barrier.wait(timeout=30)
        reads = 0
        while not done.is_set():
            store.get_messages("k", offset=-2)
            store.count_messages("k")
            reads += 1
        return reads

    with concurrent.futures.ThreadPoolExecutor(writers + 1) as pool:
        reader = pool.submit(read)
        list(pool.map(write, range(writers)))
        done.set()
        assert reader.result() > 0
    got = store.get_messages("k")
    assert len(got) == writers * per_writer
    for w in range(writers):
        mine = [m for m in got if labels([m])[0].startswith(f"w{w}-")]
        assert jsons(mine) == jsons([message(w, i) for i in range(per_writer)])
    assert len(chunk_items(moto, store)) == referenced_chunks(moto, store) == writers * 2

    def pop() -> list[str]:
        popped = []
        while (m := store.delete_last_message("k")) is not None:
            popped.append(message_to_json(m))
        return popped

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(pop) for _ in range(2)]]
    assert sorted(results[0] + results[1]) == sorted(jsons(got))
    assert left(moto, store) == []


def test_moving_many_heads_keeps_the_chunks(store: DynamoDBChatStore, moto: Any) -> None:
    """An insert shifting over 99 messages writes a new generation of heads only."""
    one = big("one", MB)
    store.add_messages("k", [*numbered(120, prefix="a"), one, *numbered(120, prefix="b")])
    gen_before = meta_item(moto, store)["Gen"]
    store.add_message("k", big("two", MB), idx=120)  # 120 heads move: too many for a transaction
    assert meta_item(moto, store)["Gen"] != gen_before
    got = store.get_messages("k", offset=120, limit=2)
    assert labels(got) == ["two", "one"]
    assert jsons(got[1:]) == jsons([one])
    assert store.count_messages("k") == 242
    assert len(chunk_items(moto, store)) == referenced_chunks(moto, store) == 4
    store.set_messages("k", numbered(3))
    assert chunk_items(moto, store) == []


def test_small_messages_keep_the_single_item_format(store: DynamoDBChatStore, moto: Any) -> None:
    """Items written before chunking existed (no Parts) are still whole messages."""
    store.add_messages("k", [ChatMessage(content="small"), big("large", MB)])
    heads = sorted((i for i in items(moto, store) if int(i["Seq"]["N"]) > 0), key=str)
    assert sorted("Parts" in i for i in heads) == [False, True]
    assert [m.content for m in store.get_messages("k", limit=1)] == ["small"]


def test_a_lost_chunk_is_corrupt_data(store: DynamoDBChatStore, moto: Any) -> None:
    store.add_messages("k", [ChatMessage(content="fine"), big("large", MB)])
    lost = chunk_items(moto, store)[0]
    moto.client().delete_item(
        TableName=store.table_name, Key={"SessionId": lost["SessionId"], "Seq": lost["Seq"]}
    )
    assert [m.content for m in store.get_messages("k", limit=1)] == ["fine"]
    with pytest.raises(CorruptDataError, match="position 1"):
        store.get_messages("k")


def test_chunks_share_the_sliding_expiry(moto: Any) -> None:
    store = moto.store("native", ttl=600)
    store.add_messages("k", [ChatMessage(content="s"), big("large", MB)])
    client = moto.client()
    meta_key = {"SessionId": {"S": "k"}, "Seq": {"N": "0"}}
    # Pretend the items' expiries were last pushed long ago: the next change must push them.
    client.update_item(
        TableName=store.table_name, Key=meta_key, UpdateExpression="SET Floor = :old",
        ExpressionAttributeValues={":old": {"N": "1"}},
    )  # fmt: skip
    for item in items(moto, store):
        if item["Seq"]["N"] != "0":
            client.update_item(
                TableName=store.table_name,
                Key={"SessionId": item["SessionId"], "Seq": item["Seq"]},
                UpdateExpression="SET #t = :old", ExpressionAttributeNames={"#t": "TTL"},
                ExpressionAttributeValues={":old": {"N": "2"}},
            )  # fmt: skip
    # Another instance: this one remembers the floor it set (a floor never drops by itself,
    # so it would rightly plan on it until the time passes it).
    moto.factory(store)().add_message("k", ChatMessage(content="t"))
    meta = meta_item(moto, store)
    others = [i for i in items(moto, store) if i["Seq"]["N"] != "0"]
    assert len(chunk_items(moto, store)) == 2
    assert all(int(i["TTL"]["N"]) >= int(meta["TTL"]["N"]) for i in others)
