"""RedisChatStore on a real three-node Redis Cluster: the whole suite, plus the hash-tag rule."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from llama_index.storage.chat_store.core import (
    BaseChatStore,
    ChatMessage,
    ConfigurationError,
    CorruptDataError,
)
from llama_index.storage.chat_store.core.backend import Change
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.faults import url_at


def _namespace(name: str | None = None) -> str:
    """A namespace hash-tagged with ``name``: a store's keys share one slot (one node)."""
    return f"{{{name or 't-' + uuid.uuid4().hex}}}:"


@dataclass(frozen=True)
class _Remap:
    """redis-py's ``address_remap``: reach one node at another address (a fault proxy)."""

    node: tuple[str, int]
    to: tuple[str, int]

    def __call__(self, address: tuple[str, int]) -> tuple[str, int]:
        return self.to if address == self.node else address


def _slot_owner(url: str, namespace: str) -> tuple[str, int]:
    """The node serving the namespace's hash slot: every key of the store lives there."""
    with redis.RedisCluster.from_url(url) as raw:
        node = raw.get_node_from_key(namespace + "k")
        return node.host, node.port


class TestRedisClusterConformance(ChatStoreConformance):
    @pytest.fixture
    def store_factory_for(
        self, redis_cluster_url: str
    ) -> Callable[..., Callable[[], BaseChatStore]]:
        def factory_for(
            name: str, *, address: tuple[str, int] | None = None, **options: Any
        ) -> Callable[[], BaseChatStore]:
            namespace, url = _namespace(name), redis_cluster_url
            if address is not None:
                # The owner of the store's slot is reached at ``address``; start there too
                # (a startup node that is the owner is not remapped).
                url = url_at(redis_cluster_url, *address)
                remap = _Remap(_slot_owner(redis_cluster_url, namespace), address)
                options["client_options"] = {"address_remap": remap}
            return functools.partial(
                RedisChatStore, redis_url=url, namespace=namespace, cluster=True, **options
            )

        return factory_for

    @pytest.fixture
    def server_address(self, redis_cluster_url: str, storage_name: str) -> tuple[str, int]:
        return _slot_owner(redis_cluster_url, _namespace(storage_name))

    @pytest.fixture
    def make_corrupt(
        self, store: RedisChatStore, redis_cluster_url: str, storage_name: str
    ) -> Iterator[Callable[[str], BaseChatStore]]:
        raw = redis.RedisCluster.from_url(redis_cluster_url)

        def corrupt(key: str) -> BaseChatStore:
            store.add_message(key, ChatMessage(content="fine"))
            raw.rpush(_namespace(storage_name) + key, b'{"role": "user", "blocks": 42}')
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


@pytest.mark.parametrize("bad", [b"{not json", b"\xff\xfe not UTF-8"])
def test_a_removal_of_corrupt_data_removes_it_and_names_key_position_and_data(
    redis_cluster_url: str, bad: bytes
) -> None:
    """The Redis-family rule on the cluster too: removed, then CorruptDataError with key,
    position and the removed data (see test_redis_faults)."""
    namespace = _namespace()
    store = RedisChatStore(redis_url=redis_cluster_url, namespace=namespace, cluster=True)
    raw = redis.RedisCluster.from_url(redis_cluster_url)
    try:
        for removal, left in [
            (lambda: store.delete_message("k", 1), 2),
            (lambda: store.delete_oldest_messages("k", 2), 1),
            (lambda: store.delete_messages("k"), 0),
        ]:
            store.set_messages("k", [ChatMessage(content=c) for c in "abc"])
            raw.lset(namespace + "k", 1, bad)
            with pytest.raises(CorruptDataError, match="removed") as info:
                removal()
            assert (info.value.key, info.value.position, info.value.data) == ("k", 1, bad)
            assert store.count_messages("k") == left
    finally:
        store.clear()
        store.close()
        raw.close()


def test_a_replayed_change_applies_nothing_and_returns_the_first_reply(
    redis_cluster_url: str,
) -> None:
    """The same op (same op id) twice on the cluster: the record shares the conversation's
    slot, and the second call changes nothing and returns what the first did.

    If this fails: the record's key is not named in KEYS or hashes to another slot
    (CROSSSLOT), or a replay is applied again.
    """
    store = RedisChatStore(redis_url=redis_cluster_url, namespace=_namespace(), cluster=True)
    try:
        store.set_messages("k", [ChatMessage(content=c) for c in "abcd"])
        first = Change()  # a cluster client may resend: every send searches the record
        assert [m.content for m in store._drive(store._oldest_plan("k", 2, first, False))] == [
            "a",
            "b",
        ]
        assert [m.content for m in store._drive(store._oldest_plan("k", 2, first, False))] == [
            "a",
            "b",
        ]
        pop = Change()
        last = store._drive(store._pop_plan("k", pop))
        assert last is not None
        assert last.content == "d"
        assert store._drive(store._pop_plan("k", pop)) == last
        assert [m.content for m in asyncio.run(store.aget_messages("k"))] == ["c"]
    finally:
        store.clear()
        store.close()
