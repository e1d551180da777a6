"""Redis: RedisChatStore beside redis-py and LlamaIndex's RedisChatStore."""
# ruff: noqa: D102 (the RawDriver protocol documents each verb)

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from uuid import uuid4

import redis

from llama_index.storage.chat_store.bench import Backend, Reference, service
from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.core.backend import Change
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.redis._direct import Direct
from llama_index.storage.chat_store.testing.services import LocalServer

PIPELINE = 1_000
"""Calls per pipeline when filling a catalog (untimed)."""
CATALOG = b"raw-catalog:"
CATALOG_INDEX = b"raw-catalog\0keys"


class RawRedis:
    """The floor: one RPUSH / LRANGE / LLEN / RPOP per call on message JSON strings."""

    label = (
        "redis-py, one command per call (RPUSH, LRANGE, LLEN, RPOP), no registry, no TTL; a "
        "catalog page is ZRANGE BYLEX LIMIT 100 on a sorted set of the keys, then one pipeline "
        "of LLEN + HGETALL (a hash of times per conversation) for those 100: two round trips, "
        "where ours is one script doing the same on the server"
    )

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def add(self, key: str, message: str) -> None:
        self.client.rpush(key, message)

    def add_many(self, key: str, messages: Sequence[str]) -> None:
        self.client.rpush(key, *messages)

    def get_all(self, key: str) -> list[str]:
        return self.client.lrange(key, 0, -1)  # type: ignore[return-value]

    def get_last(self, key: str, n: int) -> list[str]:
        return self.client.lrange(key, -n, -1)  # type: ignore[return-value]

    def count(self, key: str) -> int:
        return self.client.llen(key)  # type: ignore[return-value]

    def delete_last(self, key: str) -> str | None:
        return self.client.rpop(key)  # type: ignore[return-value]

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def close(self) -> None:
        self.client.close()

    def catalog_fill(self, keys: Sequence[str], message: str) -> None:
        now = time.time_ns() // 1_000_000
        for chunk in _chunks(keys):
            pipe = self.client.pipeline(transaction=False)
            for key in chunk:
                name = CATALOG + key.encode()
                pipe.rpush(name, message)
                pipe.hset(name + b"\0info", mapping={"c": now, "u": now})
            pipe.zadd(CATALOG_INDEX, dict.fromkeys(chunk, 0))
            pipe.execute()

    def catalog_page(self, limit: int) -> list[tuple[bytes, int, dict[bytes, bytes]]]:
        keys: list[bytes] = self.client.zrange(  # type: ignore[assignment]
            CATALOG_INDEX, b"-", b"+", bylex=True, offset=0, num=limit
        )
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(CATALOG + key)
            pipe.hgetall(CATALOG + key + b"\0info")
        replies = pipe.execute()
        return list(zip(keys, replies[::2], replies[1::2], strict=True))

    def catalog_drop(self, keys: Sequence[str]) -> None:
        for chunk in _chunks(keys):
            names = [CATALOG + key.encode() for key in chunk]
            self.client.delete(*names, *(name + b"\0info" for name in names))
        self.client.delete(CATALOG_INDEX)


def fill_catalog(store: BaseChatStore, keys: Sequence[str], message: ChatMessage) -> None:
    """Untimed: the store's own append script for every key, 1,000 calls per pipeline."""
    assert isinstance(store, RedisChatStore)
    # The store's own layout, script and client (the bench fills through its write path).
    own = store._own_sync.get()
    layout, client = store._layout, own.client if isinstance(own, Direct) else own
    for chunk in _chunks(keys):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            op = layout.append(key, [message], Change())
            assert op.script is not None
            pipe.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)
        client.script_load(op.script.source)
        pipe.execute()


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    return (keys[i : i + PIPELINE] for i in range(0, len(keys), PIPELINE))


def _start_redis() -> LocalServer:
    # Imported when the harness starts a server, not when a worker loads this file to build a
    # store: a --baseline worker runs our code at an older revision, which may predate it.
    from llama_index.storage.chat_store.redis.testing import start_redis

    return start_redis()


LLAMA_INDEX_REDIS = """
from llama_index.storage.chat_store.redis import RedisChatStore

def make_store(url):
    return RedisChatStore(redis_url=url)

def fill_catalog(store, keys, message):  # its add_message is one RPUSH: pipelined here
    data = message.model_dump_json()
    for start in range(0, len(keys), 1000):
        pipe = store._redis_client.pipeline(transaction=False)
        for key in keys[start:start + 1000]:
            pipe.rpush(key, data)
        pipe.execute()

def drop_catalog(store, keys):
    for start in range(0, len(keys), 1000):
        store._redis_client.delete(*keys[start:start + 1000])
"""

BENCH = Backend(
    title="RedisChatStore (redis-server 7, one LIST per conversation, Lua scripts)",
    server=lambda: service(
        "CHAT_STORE_TEST_REDIS_URL", _start_redis, lambda s: f"redis://127.0.0.1:{s.port}/0"
    ),
    ours=lambda url: RedisChatStore.from_url(url, namespace=f"bench-{uuid4().hex[:8]}:"),
    raw=RawRedis,
    fill_catalog=fill_catalog,
    reference=Reference(
        requirements=["llama-index-storage-chat-store-redis==0.8.0"],
        source=LLAMA_INDEX_REDIS,
    ),
    notes=[
        "Ours: every call is one EVALSHA (one round trip) that also keeps the registry (for "
        "get_keys without scans) and the expiry in step; reads are windowed inside the script. "
        "It goes out on an idle connection of our own client, without redis-py's pool "
        "checkout (metrics and a socket poll per call) and command layer; the raw floor uses "
        "redis-py as an application would.",
        "Each sample is one call after other operations, so caches are cold: a script's "
        "commands cost several times their warm time on the server. delete_last_message runs "
        "five (RPOP, LLEN, expiry, registry) where LlamaIndex's RPOP is one, which is most of "
        "what separates the two there.",
        "LlamaIndex: one command per call; get_messages always reads the whole list, "
        "add_message is RPUSH (+ EXPIRE with a ttl).",
    ],
)
