"""Compatibility both ways with LlamaIndex's UpstashChatStore 0.5.0, through the same bridge.

LlamaIndex runs in the reference environment (one subprocess run: ~3 s to import): our store
writes first, then LlamaIndex writes its own conversation (``json.dumps(message.dict())``,
spaces and all), reads ours and appends to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
import redis

from llama_index.storage.chat_store.core import ChatMessage, message_from_json, message_to_json
from llama_index.storage.chat_store.testing.samples import tricky_messages
from llama_index.storage.chat_store.testing.services import ReferencePython
from llama_index.storage.chat_store.upstash import UpstashChatStore
from llama_index.storage.chat_store.upstash.testing import UpstashBridge, start_upstash_bridge

LLAMA_INDEX_UPSTASH = "llama-index-storage-chat-store-upstash==0.5.0"

# argv = url, token, our key, its key; prints JSON.
LLAMA_INDEX_SCRIPT = r"""
import json, sys
from llama_index.core.base.llms.types import ChatMessage
from llama_index.storage.chat_store.upstash import UpstashChatStore
from upstash_redis import Redis

url, token, ours, theirs = sys.argv[1:5]
store = UpstashChatStore(redis_url=url, redis_token=token, ttl=600)
for message in [
    ChatMessage(role="system", content="You are héllo ✓ 日本語 😀"),
    ChatMessage(role="user", content="line1\nline2 \"quoted\" \\ \u0000"),
    ChatMessage(role="assistant", content=None, additional_kwargs={
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{\"a\": 1}"}}],
        "f": 1.5, "big": 10**20, "nested": {"a": [1, None, True]}}),
    ChatMessage(role="tool", content="42", additional_kwargs={"tool_call_id": "c1"}),
]:
    store.add_message(theirs, message)
raw = Redis(url=url, token=token).lrange(theirs, 0, -1)
seen = [m.model_dump_json() for m in store.get_messages(ours)]
store.add_message(ours, ChatMessage(role="user", content="from llama_index"))
print(json.dumps({"raw": raw, "seen": seen}))
"""


@dataclass
class Exchange:
    bridge: UpstashBridge
    ours: list[ChatMessage]
    raw: list[str]
    seen: list[str]

    def store(self) -> UpstashChatStore:
        return UpstashChatStore(self.bridge.url, self.bridge.token, rest_retries=0)


@pytest.fixture(scope="module")
def exchange(
    redis_url: str, llama_index_reference: Callable[[Sequence[str]], ReferencePython]
) -> Iterator[Exchange]:
    base = redis_url.split("?", 1)[0].rstrip("/")
    head, _, last = base.rpartition("/")
    db_url = f"{head}/6" if last.isdigit() and "//" in head else f"{base}/6"
    bridge = start_upstash_bridge(db_url)
    # LlamaIndex's Upstash store cannot write bytes (json.dumps of message.dict()); its
    # reader fails on unknown roles and block types: the tricky messages without those.
    ours = tricky_messages()[:-1]
    with UpstashChatStore(bridge.url, bridge.token, ttl=600, rest_retries=0) as store:
        store.add_messages("ours", ours)
    reference = llama_index_reference([LLAMA_INDEX_UPSTASH])
    result = json.loads(reference.run(LLAMA_INDEX_SCRIPT, bridge.url, bridge.token, "ours", "li"))
    yield Exchange(bridge, ours, result["raw"], result["seen"])
    bridge.stop()
    with redis.Redis.from_url(db_url) as raw:
        raw.flushdb()


def test_llama_index_data_reads_as_is(exchange: Exchange) -> None:
    assert exchange.raw[0].startswith('{"role": "system"')  # json.dumps spacing, not ours
    with exchange.store() as store:
        got = store.get_messages("li")
        assert [message_to_json(m) for m in got] == [
            message_to_json(message_from_json(item)) for item in exchange.raw
        ]
        assert got[0].content == "You are héllo ✓ 日本語 😀"
        assert got[1].content == 'line1\nline2 "quoted" \\ \x00'
        assert got[2].additional_kwargs["big"] == 10**20
        assert store.get_keys() == ["ours"]
        assert sorted(store.adopt()) == ["li", "ours"]  # re-adopting ours is harmless
        assert sorted(store.get_keys()) == ["li", "ours"]


def test_llama_index_reads_what_we_write(exchange: Exchange) -> None:
    assert exchange.seen == [message_to_json(m) for m in exchange.ours]
    with exchange.store() as store:
        assert [m.content for m in store.get_messages("ours", offset=-1)] == ["from llama_index"]
        assert store.count_messages("ours") == len(exchange.ours) + 1
