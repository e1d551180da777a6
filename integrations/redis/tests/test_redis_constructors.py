"""LlamaIndex's RedisChatStore constructor forms build working stores, on a real redis-server.

LlamaIndex's signature is ``RedisChatStore(redis_url, redis_client, aredis_client, ttl,
**kwargs)`` with ``kwargs`` going to redis-py. Each form here writes a message and reads it
back; an argument no store or redis-py knows raises, naming it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio

from llama_index.storage.chat_store.core import ChatMessage, ConfigurationError
from llama_index.storage.chat_store.redis import RedisChatStore


@pytest.fixture
def key(redis_url: str) -> Iterator[str]:
    """A raw key no other test uses (LlamaIndex's layout has no namespace), removed after."""
    name = f"ctor-{uuid.uuid4().hex}"
    yield name
    with redis.Redis.from_url(redis_url) as raw:
        raw.delete(name)


def _round_trip(store: RedisChatStore, key: str) -> None:
    store.add_message(key, ChatMessage(role="user", content="hi"))
    assert [m.content for m in store.get_messages(key)] == ["hi"]


def test_positional_arguments_follow_llama_index_order(redis_url: str, key: str) -> None:
    """RedisChatStore(url, None, None, 300) means redis_url and ttl, as in LlamaIndex.

    If this fails: __init__'s positional parameters drifted from LlamaIndex's order.
    """
    store = RedisChatStore(redis_url, None, None, 300)
    _round_trip(store, key)
    assert store.ttl == 300
    with redis.Redis.from_url(redis_url) as raw:
        assert 0 < raw.ttl(key) <= 300
    store.close()


def test_injected_sync_client(redis_url: str, key: str) -> None:
    """redis_client= is used for sync calls and left open by close().

    If this fails: the injected client is ignored or closed by the store.
    """
    client = redis.Redis.from_url(redis_url)
    store = RedisChatStore(redis_client=client)
    _round_trip(store, key)
    store.close()
    assert client.ping()
    client.close()


def test_injected_async_client(redis_url: str, key: str) -> None:
    """aredis_client= serves the async calls (on the loop it belongs to).

    If this fails: the async path ignores the injected client.
    """

    async def main() -> list[str | None]:
        client = redis.asyncio.Redis.from_url(redis_url)
        store = RedisChatStore(redis_url, aredis_client=client)
        await store.aadd_message(key, ChatMessage(role="user", content="async hi"))
        contents = [m.content for m in await store.aget_messages(key)]
        await client.aclose()
        return contents

    assert asyncio.run(main()) == ["async hi"]


def test_redis_py_keyword_options_reach_the_client(redis_url: str, key: str) -> None:
    """LlamaIndex's **kwargs (redis-py options) configure the store's connections.

    If this fails: client options are dropped instead of passed to redis-py.
    """
    name = f"li-{uuid.uuid4().hex[:8]}"
    store = RedisChatStore(redis_url=redis_url, socket_timeout=5, client_name=name)
    _round_trip(store, key)
    with redis.Redis.from_url(redis_url) as raw:
        assert name in {c.get("name") for c in raw.client_list()}
    assert store.client_options == {"socket_timeout": 5, "client_name": name}
    store.close()


def test_client_options_survive_a_dump_without_secrets(redis_url: str) -> None:
    """to_dict keeps client options for from_dict, but not secret ones.

    If this fails: the serializer of client_options leaks or loses options.
    """
    store = RedisChatStore(redis_url=redis_url, socket_timeout=5, ssl_password="hunter2")
    dumped = store.to_dict()
    assert dumped["client_options"] == {"socket_timeout": 5}
    assert "hunter2" not in repr(store)
    assert "hunter2" not in str(dumped)
    assert RedisChatStore.from_dict(dumped).client_options == {"socket_timeout": 5}


def test_base_module_exports_the_store() -> None:
    """LlamaIndex's documented import path works.

    If this fails: redis/base.py is missing or re-exports something else.
    """
    from llama_index.storage.chat_store.redis.base import RedisChatStore as FromBase

    assert FromBase is RedisChatStore


@pytest.mark.parametrize(
    "build",
    [
        lambda url: RedisChatStore(redis_url=url, tll=300),
        lambda url: RedisChatStore(url, session_id="x"),
        lambda url: RedisChatStore.from_url(url, tll=300),
        lambda url: RedisChatStore.model_validate({"redis_url": url, "tll": 300}),
    ],
    ids=["keyword", "positional-url", "from_url", "model_validate"],
)
def test_unknown_argument_is_an_error_naming_it(redis_url: str, build: object) -> None:
    """An argument neither the store nor redis-py takes raises, naming the argument.

    If this fails: the store silently drops unknown arguments again.
    """
    with pytest.raises((TypeError, ValueError)) as caught:
        build(redis_url)  # type: ignore[operator]
    assert "tll" in str(caught.value) or "session_id" in str(caught.value)


def test_option_the_store_manages_is_refused(redis_url: str) -> None:
    """decode_responses would break the store's scripts: refused with ConfigurationError.

    If this fails: the managed-options list no longer guards the store's reply parsing.
    """
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisChatStore(redis_url=redis_url, decode_responses=True)
