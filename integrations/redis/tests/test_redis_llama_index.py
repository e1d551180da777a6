"""Compatibility both ways with LlamaIndex's RedisChatStore 0.8.0, on the same real server.

LlamaIndex runs in the reference environment (a subprocess, ~3 s to import, so ONE run per
module): our store writes first, then LlamaIndex writes its own conversations, reads ours and
appends to it; the tests check what each side sees. Both use the raw-key layout in a
database of their own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
import redis

from llama_index.storage.chat_store.core import ChatMessage, SerializationError, message_to_json
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.testing.samples import (
    LLAMA_INDEX_INSTALLED,
    UNKNOWN_TYPES_JSON,
    every_block_type,
    tricky_messages,
)
from llama_index.storage.chat_store.testing.services import ReferencePython

LLAMA_INDEX_REDIS = "llama-index-storage-chat-store-redis==0.8.0"
LLAMA_INDEX_KEYS = ["a", "b", "user/1 ünï"]

# Runs in the reference environment: argv = url, our key, its keys (JSON); prints JSON.
LLAMA_INDEX_SCRIPT = r"""
import json, sys
from llama_index.core.base.llms.types import (
    ChatMessage, ImageBlock, TextBlock, ToolCallBlock, ThinkingBlock,
)
from llama_index.storage.chat_store.redis import RedisChatStore

url, ours, keys = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
store = RedisChatStore(redis_url=url, ttl=600)
messages = [
    ChatMessage(role="system", content="You are héllo ✓ 日本語 😀"),
    ChatMessage(role="user", content="line1\nline2 \"quoted\" \\ \u0000"),
    ChatMessage(role="assistant", content=None, additional_kwargs={
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{\"a\": 1}"}}],
        "f": 1.5, "big": 10**20, "nested": {"a": [1, None, True]}}),
    ChatMessage(role="tool", content="42", additional_kwargs={"tool_call_id": "c1"}),
    ChatMessage(role="user", blocks=[TextBlock(text="look"),
                                     ImageBlock(image=b"\x89PNG\r\n", image_mimetype="image/png")]),
    ChatMessage(role="assistant", blocks=[ThinkingBlock(content="hmm", num_tokens=3),
                                          ToolCallBlock(tool_call_id="c2", tool_name="g",
                                                        tool_kwargs={"x": [1.25]})]),
]
written = {}
for key in keys:
    for message in messages:
        store.add_message(key, message)
    store.add_message(key, ChatMessage(role="user", content="inserted"), idx=1)
    written[key] = [m.model_dump_json() for m in store.get_messages(key)]
seen = [m.model_dump_json() for m in store.get_messages(ours)]
store.add_message(ours, ChatMessage(role="user", content="from llama_index"))
print(json.dumps({"written": written, "seen": seen}))
"""


@dataclass
class Exchange:
    url: str
    ours: list[ChatMessage]
    written: dict[str, list[str]]
    seen: list[str]


@pytest.fixture(scope="module")
def exchange(
    redis_url: str, llama_index_reference: Callable[[Sequence[str]], ReferencePython]
) -> Iterator[Exchange]:
    base = redis_url.split("?", 1)[0].rstrip("/")
    head, _, last = base.rpartition("/")
    url = f"{head}/5" if last.isdigit() and "//" in head else f"{base}/5"
    # The last tricky message has a role and a block type LlamaIndex does not know (it fails
    # on them; we keep them).
    ours = every_block_type() + tricky_messages()[:-1]
    with RedisChatStore(redis_url=url, ttl=600) as store:
        store.set_messages("ours", ours[:3])
        store.add_messages("ours", ours[3:])
        removed = store.delete_message("ours", 1)
        assert removed is not None
        del ours[1]
    reference = llama_index_reference([LLAMA_INDEX_REDIS])
    result = json.loads(
        reference.run(LLAMA_INDEX_SCRIPT, url, "ours", json.dumps(LLAMA_INDEX_KEYS))
    )
    yield Exchange(url, ours, result["written"], result["seen"])
    with redis.Redis.from_url(url) as raw:
        raw.flushdb()


def test_llama_index_data_reads_as_is(exchange: Exchange) -> None:
    with RedisChatStore(redis_url=exchange.url) as store:
        for key, written in exchange.written.items():
            assert [message_to_json(m) for m in store.get_messages(key)] == written
            assert store.count_messages(key) == len(written)
            assert [message_to_json(m) for m in store.get_messages(key, offset=-2)] == (
                written[-2:]
            )


def test_adopt_registers_llama_index_keys_with_their_expiry(exchange: Exchange) -> None:
    with redis.Redis.from_url(exchange.url) as raw:
        raw.set("not-a-conversation", "x")
        raw.rpush("a-job-queue", "job-1", "job-2")
        with RedisChatStore(redis_url=exchange.url, namespace="") as store:
            raw.delete(*store._layout.registry)  # as if this store had never written
            assert store.get_keys() == []
            assert sorted(store.adopt()) == sorted([*LLAMA_INDEX_KEYS, "ours"])
            assert sorted(store.get_keys()) == sorted([*LLAMA_INDEX_KEYS, "ours"])
            assert store.adopt("user/*") == ["user/1 ünï"]
            assert 500_000 < int(raw.pttl("a")) <= 600_000
            expiry = raw.zscore(store._layout.registry[1], "a")
            assert expiry is not None
            assert expiry > 0


def test_llama_index_reads_what_we_write(exchange: Exchange) -> None:
    assert len(exchange.seen) == len(exchange.ours)
    for theirs, ours in zip(exchange.seen, exchange.ours, strict=True):
        _assert_same_message(theirs, message_to_json(ours))
    with RedisChatStore(redis_url=exchange.url) as store:
        assert [m.content for m in store.get_messages("ours", offset=-1)] == ["from llama_index"]
        assert store.count_messages("ours") == len(exchange.ours) + 1


def test_delete_message_keeps_order_and_expiry(exchange: Exchange) -> None:
    """Where LlamaIndex rewrites the list reversed and without TTL, ours edits in place."""
    url = exchange.url
    with RedisChatStore(redis_url=url, ttl=600) as store, redis.Redis.from_url(url) as raw:
        store.add_messages("k", [ChatMessage(content=f"m{i}") for i in range(5)])
        raw.pexpire("k", 300_000)
        assert store.delete_message("k", 2) is not None
        assert [m.content for m in store.get_messages("k")] == ["m0", "m1", "m3", "m4"]
        assert 590_000 < int(raw.pttl("k")) <= 600_000


def _assert_same_message(theirs: str, ours: str) -> None:
    """Equal, except values LlamaIndex derives when it builds a block (e.g. a guessed mimetype)."""

    def fill(mine: object, other: object) -> object:
        if isinstance(mine, dict) and isinstance(other, dict):
            return {k: fill(v, other.get(k)) for k, v in mine.items()}
        if isinstance(mine, list) and isinstance(other, list) and len(mine) == len(other):
            return [fill(a, b) for a, b in zip(mine, other, strict=True)]
        return other if mine is None else mine

    expected, got = json.loads(ours), json.loads(theirs)
    assert fill(expected, got) == got


@pytest.mark.parametrize("removal", ["delete_messages", "delete_last_message", "delete_message"])
def test_removing_a_message_of_a_later_version_says_what_happened(
    redis_url: str, removal: str
) -> None:
    """A removal returns a message LlamaIndex cannot hold, or, in LlamaIndex mode, says it is gone.

    The script removes before the reply is parsed, so in LlamaIndex mode the SerializationError
    says the message was removed and holds it as stored. Without llama-index-core it reads.

    If this fails: the error claims the data is intact while the script removed it.
    """
    store = RedisChatStore(redis_url=redis_url, namespace=f"t-{uuid.uuid4().hex}:")
    store.add_message("k", ChatMessage(content="kept"))
    redis.Redis.from_url(redis_url).rpush(f"{store.namespace}k", UNKNOWN_TYPES_JSON)
    remove = {
        "delete_messages": lambda: store.delete_messages("k"),
        "delete_last_message": lambda: store.delete_last_message("k"),
        "delete_message": lambda: store.delete_message("k", 1),
    }[removal]
    left = 0 if removal == "delete_messages" else 1
    if LLAMA_INDEX_INSTALLED:
        with pytest.raises(SerializationError) as info:
            remove()
        assert "intact" not in str(info.value)
        assert "removed from Redis" in str(info.value)
        assert (info.value.key, info.value.position) == ("k", 1)
        assert info.value.data == UNKNOWN_TYPES_JSON.encode()
    else:
        removed = remove()
        last = removed[-1] if isinstance(removed, list) else removed
        assert last is not None
        assert message_to_json(last) == UNKNOWN_TYPES_JSON
    assert store.count_messages("k") == left
    store.clear()
    store.close()
