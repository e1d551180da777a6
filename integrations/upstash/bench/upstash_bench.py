"""Upstash: UpstashChatStore beside upstash-redis and LlamaIndex's UpstashChatStore.

All three run against the Upstash REST bridge of tests-shared (stdlib HTTP in front of a local
redis-server) in a process of its own, so the figures show client overhead plus one loopback
HTTP request, not Upstash's network latency.
"""
# ruff: noqa: D102 (the RawDriver protocol documents each verb)

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import upstash_redis

from llama_index.storage.chat_store.bench import Backend, Reference
from llama_index.storage.chat_store.redis.testing import start_redis
from llama_index.storage.chat_store.upstash import UpstashChatStore
from llama_index.storage.chat_store.upstash.testing import start_upstash_bridge_process


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

    label = "upstash-redis, one REST command per call, no registry, no TTL"

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


LLAMA_INDEX_UPSTASH = """
from urllib.parse import parse_qs, urlsplit
from llama_index.storage.chat_store.upstash import UpstashChatStore

def make_store(url):
    parts = urlsplit(url)
    token = parse_qs(parts.query)["token"][0]
    return UpstashChatStore(redis_url=f"http://{parts.netloc}", redis_token=token)
"""

BENCH = Backend(
    title="UpstashChatStore (REST bridge over redis-server 7, the Redis store's Lua scripts)",
    server=bridge,
    ours=lambda url: UpstashChatStore.from_url(
        url, namespace=f"bench-{uuid4().hex[:8]}:", rest_retries=0
    ),
    raw=RawUpstash,
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
