"""LlamaIndex's UpstashChatStore constructor builds a working store, through the REST bridge.

LlamaIndex's signature is ``UpstashChatStore(redis_url, redis_token, ttl)``. The store writes a
message and reads it back; an argument no store knows raises, naming it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import upstash_redis

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.upstash import UpstashChatStore
from llama_index.storage.chat_store.upstash.testing import UpstashEndpoint


@pytest.fixture
def key(upstash_rest: UpstashEndpoint) -> Iterator[str]:
    """A raw key no other test uses (LlamaIndex's layout has no namespace), removed after."""
    name = f"ctor-{uuid.uuid4().hex}"
    yield name
    upstash_redis.Redis(url=upstash_rest.url, token=upstash_rest.token).delete(name)


def test_positional_arguments_follow_llama_index_order(
    upstash_rest: UpstashEndpoint, key: str
) -> None:
    """UpstashChatStore(url, token, 300) means redis_url, redis_token and ttl, as in LlamaIndex.

    If this fails: __init__'s positional parameters drifted from LlamaIndex's order.
    """
    store = UpstashChatStore(upstash_rest.url, upstash_rest.token, 300)
    store.add_message(key, ChatMessage(role="user", content="hi"))
    assert [m.content for m in store.get_messages(key)] == ["hi"]
    raw = upstash_redis.Redis(url=upstash_rest.url, token=upstash_rest.token)
    assert 0 < raw.ttl(key) <= 300
    store.close()


def test_base_module_exports_the_store() -> None:
    """LlamaIndex's documented import path works.

    If this fails: upstash/base.py is missing or re-exports something else.
    """
    from llama_index.storage.chat_store.upstash.base import UpstashChatStore as FromBase

    assert FromBase is UpstashChatStore


def test_unknown_keyword_is_an_error_naming_it(upstash_rest: UpstashEndpoint) -> None:
    """A misspelt argument (tll for ttl) raises instead of leaving conversations unexpiring.

    If this fails: the store silently drops unknown arguments again.
    """
    with pytest.raises((TypeError, ValueError), match="tll"):
        UpstashChatStore(upstash_rest.url, upstash_rest.token, tll=300)


def test_unknown_url_option_is_an_error_naming_it(upstash_rest: UpstashEndpoint) -> None:
    """from_url keyword options are checked the same way.

    If this fails: from_url passes unknown options somewhere that ignores them.
    """
    url = upstash_rest.url.replace("http", "upstash+http", 1)
    with pytest.raises((TypeError, ValueError), match="session_id"):
        UpstashChatStore.from_url(url, redis_token=upstash_rest.token, session_id="x")


@pytest.mark.parametrize("option", ["ttl", "rest_retries", "refresh_on_read", "retry_backoff"])
def test_a_url_option_with_a_bad_value_is_an_error_naming_it(option: str) -> None:
    """A URL option whose value its field cannot take raises, naming the option.

    If this fails: a value no option takes is read as some default (``refresh_on_read=maybe``
    was ``False``) or fails with a bare conversion error that names no option.
    """
    with pytest.raises(ValueError, match=option):
        UpstashChatStore.from_url(f"upstash+http://127.0.0.1:1?token=t&{option}=maybe")
    store = UpstashChatStore.from_url("upstash+http://127.0.0.1:1?token=t&ttl=5&refresh_on_read=on")
    assert (store.ttl, store.refresh_on_read) == (5, True)
