"""Redis: RedisChatStore beside redis-py and LlamaIndex's RedisChatStore."""
# ruff: noqa: D102 (the RawDriver protocol documents each verb)

from __future__ import annotations

from collections.abc import Sequence
from uuid import uuid4

import redis

from llama_index.storage.chat_store.bench import Backend, Reference, service
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.testing.services import LocalServer


class RawRedis:
    """The floor: one RPUSH / LRANGE / LLEN / RPOP per call on message JSON strings."""

    label = "redis-py, one command per call (RPUSH, LRANGE, LLEN, RPOP), no registry, no TTL"

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


def _start_redis() -> LocalServer:
    # Imported when the harness starts a server, not when a worker loads this file to build a
    # store: a --baseline worker runs our code at an older revision, which may predate it.
    from llama_index.storage.chat_store.redis.testing import start_redis

    return start_redis()


LLAMA_INDEX_REDIS = """
from llama_index.storage.chat_store.redis import RedisChatStore

def make_store(url):
    return RedisChatStore(redis_url=url)
"""

BENCH = Backend(
    title="RedisChatStore (redis-server 7, one LIST per conversation, Lua scripts)",
    server=lambda: service(
        "CHAT_STORE_TEST_REDIS_URL", _start_redis, lambda s: f"redis://127.0.0.1:{s.port}/0"
    ),
    ours=lambda url: RedisChatStore.from_url(url, namespace=f"bench-{uuid4().hex[:8]}:"),
    raw=RawRedis,
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
