"""RedisChatStore against the conformance suite, on a real redis-server.

Runs twice: with a namespace (isolated stores side by side) and with the default raw keys
(LlamaIndex's layout) in a database of its own.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.faults import address_of, url_at
from llama_index.storage.chat_store.testing.services import free_port


def _with_db(url: str, db: int) -> str:
    base = url.split("?", 1)[0].rstrip("/")
    head, _, last = base.rpartition("/")
    return f"{head}/{db}" if last.isdigit() and "//" in head else f"{base}/{db}"


class TestRedisConformance(ChatStoreConformance):
    @pytest.fixture
    def namespace(self) -> str:
        return f"t-{uuid.uuid4().hex}:"

    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url

    @pytest.fixture
    def store_factory(self, url: str, namespace: str) -> Callable[[], BaseChatStore]:
        return functools.partial(RedisChatStore, redis_url=url, namespace=namespace)

    @pytest.fixture
    def server_address(self, url: str) -> tuple[str, int]:
        return address_of(url, 6379)

    @pytest.fixture
    def store_factory_at(
        self, url: str, namespace: str
    ) -> Callable[[str, int], Callable[[], BaseChatStore]]:
        def at(host: str, port: int) -> Callable[[], BaseChatStore]:
            moved = url_at(url, host, port)
            return functools.partial(RedisChatStore, redis_url=moved, namespace=namespace)

        return at

    @pytest.fixture
    def other_store(self, url: str) -> Iterator[BaseChatStore]:
        store = RedisChatStore(redis_url=url, namespace=f"other-{uuid.uuid4().hex}:")
        yield store
        store.clear()
        store.close()

    @pytest.fixture
    def unreachable_store(self, namespace: str) -> BaseChatStore:
        return RedisChatStore(redis_url=f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)

    @pytest.fixture
    def ttl_store_factory(self, url: str, namespace: str) -> Iterator[Callable[..., BaseChatStore]]:
        made: list[RedisChatStore] = []

        def make(seconds: int, **options: Any) -> BaseChatStore:
            made.append(RedisChatStore(redis_url=url, namespace=namespace, ttl=seconds, **options))
            return made[-1]

        yield make
        for store in made:
            store.clear()
            store.close()

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
        return ""

    @pytest.fixture
    def url(self, redis_url: str) -> Iterator[str]:
        url = _with_db(redis_url, 3)
        yield url
        with redis.Redis.from_url(url) as raw:
            raw.flushdb()
