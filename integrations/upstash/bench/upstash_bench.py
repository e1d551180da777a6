"""Upstash: UpstashChatStore beside upstash-redis and LlamaIndex's UpstashChatStore.

All three run against the Upstash REST bridge of tests-shared (stdlib HTTP in front of a local
redis-server) in a process of its own, so the figures show client overhead plus one loopback
HTTP request, not Upstash's network latency.
"""
# ruff: noqa: D102 (the RawDriver protocol documents each verb)

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import upstash_redis

from llama_index.storage.chat_store.bench import Backend, Reference
from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.core.backend import Change
from llama_index.storage.chat_store.redis.testing import start_redis
from llama_index.storage.chat_store.upstash import UpstashChatStore
from llama_index.storage.chat_store.upstash.testing import start_upstash_bridge_process

PIPELINE = 1_000
"""Commands per pipeline request when filling a catalog (untimed)."""
CATALOG = "raw-catalog:"
CATALOG_INDEX = "raw-catalog\0keys"


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    return (keys[i : i + PIPELINE] for i in range(0, len(keys), PIPELINE))


@contextmanager
def bridge() -> Iterator[str]:
    """Yield ``upstash+http://HOST:PORT?token=...`` of a bridge over a fresh redis-server."""
    server = start_redis()
    try:
        rest, endpoint = start_upstash_bridge_process(f"redis://127.0.0.1:{server.port}/0")
        try:
            yield f"upstash+{endpoint.url}?token={endpoint.token}"
        finally:
            rest.cleanup()
    finally:
        server.cleanup()


def _split(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return f"http://{parts.netloc}", parse_qs(parts.query)["token"][0]


class RawUpstash:
    """The floor: one REST command per call (RPUSH, LRANGE, LLEN, RPOP) with upstash-redis."""

    label = (
        "upstash-redis, one REST command per call, no registry, no TTL; a catalog page is "
        "ZRANGE BYLEX LIMIT 100 on a sorted set of the keys, then one pipeline request of "
        "LLEN + HGETALL for those 100: two requests, where ours is one script call"
    )

    def __init__(self, url: str) -> None:
        rest_url, token = _split(url)
        self.client = upstash_redis.Redis(rest_url, token, rest_retries=0, allow_telemetry=False)

    def add(self, key: str, message: str) -> None:
        self.client.rpush(key, message)

    def add_many(self, key: str, messages: Sequence[str]) -> None:
        self.client.rpush(key, *messages)

    def get_all(self, key: str) -> list[str]:
        return self.client.lrange(key, 0, -1)

    def get_last(self, key: str, n: int) -> list[str]:
        return self.client.lrange(key, -n, -1)

    def count(self, key: str) -> int:
        return self.client.llen(key)

    def delete_last(self, key: str) -> str | None:
        return self.client.rpop(key)  # type: ignore[return-value]

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    def catalog_fill(self, keys: Sequence[str], message: str) -> None:
        now = time.time_ns() // 1_000_000
        for chunk in _chunks(keys):
            pipe = self.client.pipeline()
            for key in chunk:
                pipe.rpush(CATALOG + key, message)
                pipe.hset(CATALOG + key + "\0info", values={"c": now, "u": now})
            pipe.zadd(CATALOG_INDEX, dict.fromkeys(chunk, 0))
            pipe.exec()

    def catalog_page(self, limit: int) -> list[tuple[str, Any, Any]]:
        keys = self.client.zrange(CATALOG_INDEX, "-", "+", sortby="BYLEX", offset=0, count=limit)
        pipe = self.client.pipeline()
        for key in keys:
            pipe.llen(CATALOG + key)
            pipe.hgetall(CATALOG + key + "\0info")
        replies = pipe.exec() if keys else []
        return list(zip(keys, replies[::2], replies[1::2], strict=True))

    def catalog_drop(self, keys: Sequence[str]) -> None:
        for chunk in _chunks(keys):
            names = [CATALOG + key for key in chunk]
            self.client.delete(*names, *(name + "\0info" for name in names))
        self.client.delete(CATALOG_INDEX)


def fill_catalog(store: BaseChatStore, keys: Sequence[str], message: ChatMessage) -> None:
    """Untimed: the store's own append script for every key, 1,000 calls per pipeline request."""
    assert isinstance(store, UpstashChatStore)
    # The store's own layout, script and client (the bench fills through its write path).
    layout, client = store._layout, store._own_sync.get()
    for chunk in _chunks(keys):
        pipe = client.pipeline()
        for key in chunk:
            op = layout.append(key, [message], Change())
            assert op.script is not None
            pipe.evalsha(op.script.sha, keys=list(op.keys), args=list(op.args))
        client.script_load(op.script.source)
        pipe.exec()


LLAMA_INDEX_UPSTASH = """
from urllib.parse import parse_qs, urlsplit
from llama_index.storage.chat_store.upstash import UpstashChatStore

def make_store(url):
    parts = urlsplit(url)
    token = parse_qs(parts.query)["token"][0]
    return UpstashChatStore(redis_url=f"http://{parts.netloc}", redis_token=token)

def fill_catalog(store, keys, message):  # its add_message is one RPUSH: pipelined here
    data = message.model_dump_json()
    for start in range(0, len(keys), 1000):
        pipe = store._sync_redis_client.pipeline()
        for key in keys[start:start + 1000]:
            pipe.rpush(key, data)
        pipe.exec()

def drop_catalog(store, keys):
    for start in range(0, len(keys), 1000):
        store._sync_redis_client.delete(*keys[start:start + 1000])
"""

BENCH = Backend(
    title="UpstashChatStore (REST bridge over redis-server 7, the Redis store's Lua scripts)",
    server=bridge,
    ours=lambda url: UpstashChatStore.from_url(
        url, namespace=f"bench-{uuid4().hex[:8]}:", rest_retries=0
    ),
    raw=RawUpstash,
    fill_catalog=fill_catalog,
    reference=Reference(
        requirements=["llama-index-storage-chat-store-upstash==0.5.0"],
        source=LLAMA_INDEX_UPSTASH,
    ),
    notes=[
        "Ours: every call is one EVALSHA request (registry and expiry kept in the script); "
        "windowed reads are one LRANGE.",
        "LlamaIndex: one request per command; get_messages reads the whole list.",
        "Served by the tests-shared REST bridge on loopback: real Upstash adds network latency "
        "to every request alike.",
    ],
)
