"""The Redis layout beyond the suite: registry, expiry, paging, exact positions, script cache."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.redis.layout import KEYS_PAGE_SIZE, has_hash_tag


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def namespace() -> str:
    return f"layout-{uuid.uuid4().hex}:"


@pytest.fixture
def store(redis_url: str, namespace: str) -> Iterator[RedisChatStore]:
    with RedisChatStore(redis_url=redis_url, namespace=namespace) as store:
        yield store
        store.clear()


def _texts(messages: list[ChatMessage]) -> list[str | None]:
    return [m.content for m in messages]


def test_get_keys_never_scans_the_keyspace(store: RedisChatStore, raw: redis.Redis) -> None:
    raw.mset({f"unrelated-{i}": "x" for i in range(300)})
    store.add_message("mine", ChatMessage(content="x"))
    raw.config_resetstat()
    assert store.get_keys() == ["mine"]
    called = raw.info("commandstats")
    assert not [name for name in called if name in {"cmdstat_keys", "cmdstat_scan"}]
    raw.delete(*[f"unrelated-{i}" for i in range(300)])


def test_positions_are_exact_among_equal_messages(store: RedisChatStore) -> None:
    same = [ChatMessage(content=t) for t in ["a", "a", "b", "a", "a"]]
    store.set_messages("k", same)
    removed = store.delete_message("k", 3)
    assert removed is not None
    assert removed.content == "a"
    assert _texts(store.get_messages("k")) == ["a", "a", "b", "a"]
    store.add_message("k", ChatMessage(content="c"), idx=3)
    assert _texts(store.get_messages("k")) == ["a", "a", "b", "c", "a"]


def test_batches_larger_than_one_push(store: RedisChatStore) -> None:
    many = [ChatMessage(content=f"m{i}") for i in range(2500)]
    store.add_messages("k", many)
    store.set_messages("copy", store.get_messages("k"))
    assert store.count_messages("copy") == 2500
    assert _texts(store.get_messages("copy", offset=-3)) == ["m2497", "m2498", "m2499"]


@pytest.mark.parametrize("ttl", [None, 600])
def test_iterating_while_deleting_lists_each_key_once(
    redis_url: str, namespace: str, ttl: int | None
) -> None:
    keys = [f"k{i:03d}" for i in range(2 * KEYS_PAGE_SIZE + 17)]
    with RedisChatStore(redis_url=redis_url, namespace=namespace, ttl=ttl) as store:
        for key in keys:
            store.add_message(key, ChatMessage(content=key))
        seen = []
        for key in store.iter_keys():
            seen.append(key)
            store.delete_messages(key)
        assert sorted(seen) == keys
        assert store.get_keys() == []


def test_iterating_while_writing_misses_nothing(redis_url: str, namespace: str) -> None:
    keys = [f"k{i:03d}" for i in range(KEYS_PAGE_SIZE + 50)]
    with RedisChatStore(redis_url=redis_url, namespace=namespace, ttl=600) as store:
        for key in keys:
            store.add_message(key, ChatMessage(content=key))
        seen = []
        for key in store.iter_keys():
            seen.append(key)
            store.add_message(key, ChatMessage(content="again"))  # moves its expiry forward
        assert seen == keys
        store.clear()


def test_conversation_and_registry_entry_expire_together(
    redis_url: str, namespace: str, raw: redis.Redis
) -> None:
    with RedisChatStore(redis_url=redis_url, namespace=namespace, ttl=600) as store:
        index, expiring = store._layout.registry
        store.add_message("k", ChatMessage(content="x"))
        now_ms = time.time() * 1000
        expiry = raw.zscore(expiring, "k")
        assert expiry is not None
        conversation_left = raw.pttl(namespace + "k")
        assert abs((expiry - now_ms) - conversation_left) < 1000
        # Read one after the other: on a loaded machine milliseconds pass between the reads.
        assert raw.pttl(index) >= conversation_left - 1000
        assert raw.pttl(expiring) >= conversation_left - 1000
        with RedisChatStore(redis_url=redis_url, namespace=namespace) as forever:
            forever.add_message("k", ChatMessage(content="no ttl here"))
            assert raw.pttl(namespace + "k") == -1
            assert raw.zscore(expiring, "k") is None
            assert raw.pttl(index) == -1
        store.clear()
    assert raw.exists(index, expiring) == 0


def test_expired_entries_leave_the_registry(
    redis_url: str, namespace: str, raw: redis.Redis
) -> None:
    with RedisChatStore(redis_url=redis_url, namespace=namespace, ttl=1) as store:
        store.add_messages("a", [ChatMessage(content="x")])
        store.add_messages("b", [ChatMessage(content="x")])
        time.sleep(1.2)
        assert store.get_keys() == []
        assert raw.exists(*store._layout.registry) == 0


def test_reads_slide_the_expiry_only_when_asked(
    redis_url: str, namespace: str, raw: redis.Redis
) -> None:
    for refresh in (False, True):
        with RedisChatStore(
            redis_url=redis_url, namespace=namespace, ttl=600, refresh_on_read=refresh
        ) as store:
            store.add_message("k", ChatMessage(content="x"))
            raw.pexpire(namespace + "k", 10_000)
            store.get_messages("k", offset=-1)
            store.count_messages("k")
            left = raw.pttl(namespace + "k")
            assert (left > 500_000) is refresh
            store.clear()


def test_script_cache_flushed_falls_back_to_eval(store: RedisChatStore, raw: redis.Redis) -> None:
    store.add_message("k", ChatMessage(content="x"))
    raw.script_flush()
    store.add_message("k", ChatMessage(content="y"))
    raw.script_flush()
    assert _texts(asyncio.run(store.aget_messages("k"))) == ["x", "y"]


def test_adopt_stays_inside_the_namespace(redis_url: str, raw: redis.Redis) -> None:
    namespace = f"{{ad*{uuid.uuid4().hex}}}:"
    message = ChatMessage(content="x").model_dump_json()
    raw.rpush(namespace + "one", message)
    raw.rpush(namespace.replace("*", "X") + "other", message)
    with RedisChatStore(redis_url=redis_url, namespace=namespace) as store:
        assert store.adopt() == ["one"]
        assert store.get_keys() == ["one"]
        store.clear()
    raw.delete(namespace.replace("*", "X") + "other")


@pytest.mark.parametrize(
    ("namespace", "tagged"),
    [("", False), ("app:", False), ("{app}:", True), ("x{a}", True), ("{}:", False),
     ("}{", False), ("a{b", False)],
)  # fmt: skip
def test_hash_tag_detection(namespace: str, tagged: bool) -> None:
    assert has_hash_tag(namespace) is tagged


def test_a_change_to_a_listed_conversation_makes_no_zadd(
    store: RedisChatStore, raw: redis.Redis
) -> None:
    """The common append skips the registry: its catalog stamp shows the member is listed."""
    store.add_message("k", ChatMessage(content="a"))
    raw.config_resetstat()
    store.add_message("k", ChatMessage(content="b"))
    store.delete_message("k", 0)
    assert "cmdstat_zadd" not in raw.info("commandstats")
    assert store.get_keys() == ["k"]


def test_a_conversation_without_a_catalog_entry_is_listed_again_by_a_change(
    store: RedisChatStore, raw: redis.Redis, namespace: str
) -> None:
    """Data from before the catalog (registered, no entry) or adopted lists keeps listing."""
    index = store._layout.registry[0]
    store.add_message("k", ChatMessage(content="a"))
    raw.delete(namespace + "k\0info")
    raw.zrem(index, "k")
    store.add_message("k", ChatMessage(content="b"))
    assert store.get_keys() == ["k"]
    assert store.get_conversation("k") is not None
