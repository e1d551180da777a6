"""UpstashChatStore against the conformance suite: the real upstash-redis client, through the
Upstash REST bridge (tests-shared), in front of a real redis-server."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.faults import address_of, url_at
from llama_index.storage.chat_store.testing.services import UpstashEndpoint, free_port
from llama_index.storage.chat_store.upstash import UpstashChatStore


class TestUpstashConformance(ChatStoreConformance):
    @pytest.fixture
    def namespace(self) -> str:
        return f"t-{uuid.uuid4().hex}:"

    @pytest.fixture
    def store_factory(
        self, upstash_rest: UpstashEndpoint, namespace: str
    ) -> Callable[[], BaseChatStore]:
        return functools.partial(
            UpstashChatStore, redis_url=upstash_rest.url, redis_token=upstash_rest.token,
            namespace=namespace, rest_retries=0,
        )  # fmt: skip

    @pytest.fixture
    def server_address(self, upstash_rest: UpstashEndpoint) -> tuple[str, int]:
        return address_of(upstash_rest.url, 443)

    @pytest.fixture
    def store_factory_at(
        self, upstash_rest: UpstashEndpoint, namespace: str
    ) -> Callable[[str, int], Callable[[], BaseChatStore]]:
        def at(host: str, port: int) -> Callable[[], BaseChatStore]:
            return functools.partial(
                UpstashChatStore, redis_url=url_at(upstash_rest.url, host, port),
                redis_token=upstash_rest.token, namespace=namespace, rest_retries=0,
            )  # fmt: skip

        return at

    @pytest.fixture
    def secrets(self, upstash_rest: UpstashEndpoint) -> dict[str, str]:
        return {"redis_token": upstash_rest.token}

    @pytest.fixture
    def other_store(self, upstash_rest: UpstashEndpoint) -> Iterator[BaseChatStore]:
        store = UpstashChatStore(
            upstash_rest.url, upstash_rest.token, namespace=f"o-{uuid.uuid4().hex}:",
            rest_retries=0,
        )  # fmt: skip
        yield store
        store.clear()
        store.close()

    @pytest.fixture
    def unreachable_store(self, namespace: str) -> BaseChatStore:
        return UpstashChatStore(
            f"http://127.0.0.1:{free_port()}", "token", namespace=namespace, rest_retries=0
        )

    @pytest.fixture
    def ttl_store_factory(
        self, upstash_rest: UpstashEndpoint, namespace: str
    ) -> Iterator[Callable[..., BaseChatStore]]:
        made: list[UpstashChatStore] = []

        def make(seconds: int, **options: Any) -> BaseChatStore:
            made.append(
                UpstashChatStore(
                    upstash_rest.url,
                    upstash_rest.token,
                    ttl=seconds,
                    namespace=namespace,
                    rest_retries=0,
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
        self, store: UpstashChatStore, redis_url: str, namespace: str
    ) -> Iterator[Callable[[str], BaseChatStore]]:
        raw = redis.Redis.from_url(redis_url)  # the Redis behind the bridge

        def corrupt(key: str) -> BaseChatStore:
            store.add_message(key, ChatMessage(content="fine"))
            raw.rpush(namespace + key, b'{"role": "user", "blocks": 42}')
            return store

        yield corrupt
        raw.close()
