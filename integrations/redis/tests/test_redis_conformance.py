"""RedisChatStore against the conformance suite, on a real redis-server.

Runs twice: with a namespace (isolated stores side by side) and with the default raw keys
(LlamaIndex's layout) in a database of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.faults import address_of, url_at


def _with_db(url: str, db: int) -> str:
    base = url.split("?", 1)[0].rstrip("/")
    head, _, last = base.rpartition("/")
    return f"{head}/{db}" if last.isdigit() and "//" in head else f"{base}/{db}"


class TestRedisConformance(ChatStoreConformance):
    @pytest.fixture
    def namespace(self, storage_name: str) -> str:
        return f"{storage_name}:"

    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url

    @pytest.fixture
    def store_factory_for(
        self, url: str, storage_name: str, namespace: str
    ) -> Callable[..., Callable[[], BaseChatStore]]:
        def factory_for(
            name: str, *, address: tuple[str, int] | None = None, **options: Any
        ) -> Callable[[], BaseChatStore]:
            return functools.partial(
                RedisChatStore,
                redis_url=url if address is None else url_at(url, *address),
                namespace=namespace if name == storage_name else f"{name}:",
                **options,
            )

        return factory_for

    @pytest.fixture
    def server_address(self, url: str) -> tuple[str, int]:
        return address_of(url, 6379)

    @pytest.fixture
    def make_corrupt(
        self, store: RedisChatStore, url: str, namespace: str
    ) -> Iterator[Callable[[str], BaseChatStore]]:
        raw = redis.Redis.from_url(url)

        def corrupt(key: str) -> BaseChatStore:
            store.add_message(key, ChatMessage(content="fine"))
            raw.rpush(namespace + key, b'{"role": "user", "blocks": 42}')
            return store

        yield corrupt
        raw.close()


class TestRedisRawKeysConformance(TestRedisConformance):
    """The default layout: conversations at the raw key, as LlamaIndex writes them."""

    @pytest.fixture
    def namespace(self) -> str:
        return ""  # the store's own storage: raw keys (other names stay namespaced)

    @pytest.fixture
    def url(self, redis_url: str) -> Iterator[str]:
        url = _with_db(redis_url, 3)
        yield url
        with redis.Redis.from_url(url) as raw:
            raw.flushdb()
