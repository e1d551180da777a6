"""UpstashChatStore against the conformance suite: the real upstash-redis client, through the
Upstash REST bridge (tests-shared), in front of a real redis-server."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.faults import address_of, url_at
from llama_index.storage.chat_store.upstash import UpstashChatStore
from llama_index.storage.chat_store.upstash.testing import UpstashEndpoint


class TestUpstashConformance(ChatStoreConformance):
    @pytest.fixture
    def namespace(self, storage_name: str) -> str:
        return f"{storage_name}:"

    @pytest.fixture
    def store_factory_for(
        self, upstash_rest: UpstashEndpoint
    ) -> Callable[..., Callable[[], BaseChatStore]]:
        def factory_for(
            name: str, *, address: tuple[str, int] | None = None, **options: Any
        ) -> Callable[[], BaseChatStore]:
            url = upstash_rest.url if address is None else url_at(upstash_rest.url, *address)
            return functools.partial(
                UpstashChatStore, redis_url=url, redis_token=upstash_rest.token,
                namespace=f"{name}:", **{"rest_retries": 0, **options},
            )  # fmt: skip

        return factory_for

    @pytest.fixture
    def server_address(self, upstash_rest: UpstashEndpoint) -> tuple[str, int]:
        return address_of(upstash_rest.url, 443)

    @pytest.fixture
    def secrets(self, upstash_rest: UpstashEndpoint) -> dict[str, str]:
        return {"redis_token": upstash_rest.token}

    @pytest.fixture
    def make_corrupt(
        self, store: UpstashChatStore, redis_url: str, namespace: str
    ) -> Iterator[Callable[[str], BaseChatStore]]:
        raw = redis.Redis.from_url(redis_url)  # the Redis behind the bridge

        def corrupt(key: str) -> BaseChatStore:
            store.add_message(key, ChatMessage(content="fine"))
            raw.rpush(namespace + key, b'{"role": "user", "blocks": 42}')
            return store

        yield corrupt
        raw.close()
