"""Tokens, an endpoint going away and coming back, URLs, and data that is not ours."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendUnavailableError,
    ChatMessage,
    ConfigurationError,
    CorruptDataError,
)
from llama_index.storage.chat_store.redis.testing import start_redis
from llama_index.storage.chat_store.upstash import UpstashChatStore
from llama_index.storage.chat_store.upstash.testing import UpstashBridge, start_upstash_bridge


@pytest.fixture
def bridge(redis_url: str) -> Iterator[UpstashBridge]:
    bridge = start_upstash_bridge(redis_url)
    yield bridge
    bridge.stop()


@pytest.fixture
def store(bridge: UpstashBridge) -> Iterator[UpstashChatStore]:
    with UpstashChatStore(bridge.url, bridge.token, namespace="faults:", rest_retries=0) as store:
        yield store
        store.clear()


def test_wrong_token_is_an_authentication_error(bridge: UpstashBridge) -> None:
    store = UpstashChatStore(bridge.url, "not-the-token", rest_retries=0)
    with pytest.raises(AuthenticationError, match="WRONGPASS"):
        store.add_message("k", ChatMessage(content="x"))
    with pytest.raises(AuthenticationError):
        asyncio.run(store.aget_messages("k"))
    with pytest.raises(AuthenticationError):
        store.get_keys()


def test_endpoint_gone_then_back(bridge: UpstashBridge, store: UpstashChatStore) -> None:
    store.add_message("k", ChatMessage(content="before"))
    asyncio.run(store.aadd_message("k", ChatMessage(content="before, async")))
    bridge.stop()
    with pytest.raises(BackendUnavailableError) as info:
        store.add_message("k", ChatMessage(content="lost"))
    assert bridge.token not in str(info.value)
    assert bridge.url in str(info.value)
    with pytest.raises(BackendUnavailableError):
        asyncio.run(store.acount_messages("k"))
    bridge.start()
    store.add_message("k", ChatMessage(content="after"))
    assert [m.content for m in store.get_messages("k")] == ["before", "before, async", "after"]
    assert asyncio.run(store.acount_messages("k")) == 3


def test_non_list_value_is_corrupt_and_left_alone(store: UpstashChatStore, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as raw:
        raw.set("faults:session", "another app's value")
        for call in (
            lambda: store.get_messages("session"),
            lambda: store.set_messages("session", [ChatMessage(content="x")]),
            lambda: store.delete_message("session", 0),
            lambda: asyncio.run(store.aadd_message("session", ChatMessage(content="x"))),
        ):
            with pytest.raises(CorruptDataError, match="'session'"):
                call()
        assert raw.get("faults:session") == b"another app's value"
        raw.delete("faults:session")


def test_flushed_script_cache_falls_back_to_eval(store: UpstashChatStore, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as raw:
        store.add_message("k", ChatMessage(content="x"))
        raw.script_flush()
        store.add_message("k", ChatMessage(content="y"))
        raw.script_flush()
        assert [m.content for m in asyncio.run(store.aget_messages("k"))] == ["x", "y"]


def test_urls(bridge: UpstashBridge, monkeypatch: pytest.MonkeyPatch) -> None:
    host = bridge.url.removeprefix("http://")
    store = UpstashChatStore.from_url(
        f"upstash+http://{host}?token={bridge.token}&namespace=u:&ttl=60", rest_retries=0
    )
    assert (store.redis_url, store.namespace, store.ttl) == (bridge.url, "u:", 60)
    store.add_message("k", ChatMessage(content="via url"))
    assert store.get_keys() == ["k"]
    store.clear()
    secure = UpstashChatStore.from_url("upstash+https://:s3cr3t-t0k@eu1-x.upstash.io")
    assert secure.redis_url == "https://eu1-x.upstash.io"
    assert "s3cr3t-t0k" not in repr(secure) + secure.model_dump_json()
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", bridge.url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", bridge.token)
    from_env = UpstashChatStore(rest_retries=0)
    assert from_env.count_messages("k") == 0
    rebuilt = UpstashChatStore.from_dict(store.to_dict(), redis_token=bridge.token)
    assert rebuilt.namespace == "u:"


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPSTASH_REDIS_REST_URL", raising=False)
    monkeypatch.delenv("UPSTASH_REDIS_REST_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="token"):
        UpstashChatStore("https://eu1-x.upstash.io")
    with pytest.raises(ConfigurationError, match="REST URL"):
        UpstashChatStore(redis_token="t")
    with pytest.raises(ConfigurationError, match="REST URL"):
        UpstashChatStore("redis://eu1-x.upstash.io:6379", "t")
    with pytest.raises(ConfigurationError, match="unknown option"):
        UpstashChatStore.from_url("upstash+https://eu1-x.upstash.io?token=t&colour=blue")


@pytest.mark.parametrize("bad", [b"{not json", b"\xff\xfe not UTF-8"])
def test_corrupt_elements_are_corrupt_data_naming_key_position_and_data(
    store: UpstashChatStore, redis_url: str, bad: bytes
) -> None:
    """Reads raise CorruptDataError (not a retryable error) and change nothing; removals
    remove, then raise it with the removed data: the rule of every Redis-family store."""
    with redis.Redis.from_url(redis_url) as raw:
        store.set_messages("k", [ChatMessage(content=c) for c in "abc"])
        raw.lset("faults:k", 1, bad)
        for read in (
            lambda: store.get_messages("k"),
            lambda: store.get_messages("k", offset=1, limit=1),
            lambda: asyncio.run(store.aget_messages("k")),
        ):
            with pytest.raises(CorruptDataError) as info:
                read()
            assert (info.value.key, info.value.position, info.value.data) == ("k", 1, bad)
        assert [m.content for m in store.get_messages("k", limit=1)] == ["a"]
        assert raw.llen("faults:k") == 3
        for removal, left in [
            (lambda: store.delete_message("k", 1), 2),
            (lambda: store.delete_oldest_messages("k", 2), 1),
            (lambda: asyncio.run(store.adelete_messages("k")), 0),
        ]:
            store.set_messages("k", [ChatMessage(content=c) for c in "abc"])
            raw.lset("faults:k", 1, bad)
            with pytest.raises(CorruptDataError, match="removed") as info:
                removal()
            assert (info.value.key, info.value.position, info.value.data) == ("k", 1, bad)
            assert store.count_messages("k") == left


def test_the_redis_behind_upstash_down_is_backend_unavailable() -> None:
    server = start_redis()
    bridge = start_upstash_bridge(f"redis://127.0.0.1:{server.port}/0")
    store = UpstashChatStore(bridge.url, bridge.token, rest_retries=0)
    try:
        store.add_message("k", ChatMessage(content="before"))
        server.stop()
        for call in (
            lambda: store.get_messages("k"),
            lambda: store.add_message("k", ChatMessage(content="x")),
            lambda: asyncio.run(store.acount_messages("k")),
        ):
            with pytest.raises(BackendUnavailableError, match="cannot serve") as info:
                call()
            assert bridge.token not in str(info.value)
        server.start()
        store.add_message("k", ChatMessage(content="after"))
        assert store.count_messages("k") == 1  # a fresh server: the data did not persist
    finally:
        store.close()
        bridge.stop()
        server.cleanup()
