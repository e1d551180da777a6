"""RedisChatStore on a real three-node Redis Cluster: the whole suite, plus the hash-tag rule."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage, ConfigurationError
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.services import free_port


def _namespace() -> str:
    return f"{{t-{uuid.uuid4().hex}}}:"


class TestRedisClusterConformance(ChatStoreConformance):
    @pytest.fixture
    def namespace(self) -> str:
        return _namespace()

    @pytest.fixture
    def store_factory(self, redis_cluster_url: str, namespace: str) -> Callable[[], BaseChatStore]:
        return functools.partial(
            RedisChatStore, redis_url=redis_cluster_url, namespace=namespace, cluster=True
        )

    @pytest.fixture
    def other_store(self, redis_cluster_url: str) -> Iterator[BaseChatStore]:
        store = RedisChatStore(redis_url=redis_cluster_url, namespace=_namespace(), cluster=True)
        yield store
        store.clear()
        store.close()

    @pytest.fixture
    def unreachable_store(self, namespace: str) -> BaseChatStore:
        return RedisChatStore(
            redis_url=f"redis://127.0.0.1:{free_port()}", namespace=namespace, cluster=True
        )

    @pytest.fixture
    def ttl_store_factory(
        self, redis_cluster_url: str, namespace: str
    ) -> Iterator[Callable[..., BaseChatStore]]:
        made: list[RedisChatStore] = []

        def make(seconds: int, **options: Any) -> BaseChatStore:
            made.append(
                RedisChatStore(
                    redis_url=redis_cluster_url,
                    namespace=namespace,
                    ttl=seconds,
                    cluster=True,
                    **options,
                )
            )
            return made[-1]

        yield make
        for store in made:
            store.clear()
            store.close()

    @pytest.fixture
    def make_corrupt(
        self, store: RedisChatStore, redis_cluster_url: str, namespace: str
    ) -> Iterator[Callable[[str], BaseChatStore]]:
        raw = redis.RedisCluster.from_url(redis_cluster_url)

        def corrupt(key: str) -> BaseChatStore:
            store.add_message(key, ChatMessage(content="fine"))
            raw.rpush(namespace + key, b'{"role": "user", "blocks": 42}')
            return store

        yield corrupt
        raw.close()


def test_cluster_needs_a_hash_tagged_namespace(redis_cluster_url: str) -> None:
    with pytest.raises(ConfigurationError, match="hash tag"):
        RedisChatStore(redis_url=redis_cluster_url, cluster=True)
    with pytest.raises(ConfigurationError, match="hash tag"):
        RedisChatStore(redis_url=redis_cluster_url, cluster=True, namespace="app:")


def test_plain_client_on_a_cluster_node_says_what_to_do(redis_cluster_url: str) -> None:
    """Without a hash tag a conversation and the registry live in different slots (CROSSSLOT)."""
    store = RedisChatStore(redis_url=redis_cluster_url, namespace="plain:")
    with pytest.raises(ConfigurationError, match="cluster=True"):
        store.add_message("k0", ChatMessage(content="x"))
