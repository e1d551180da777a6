"""The RedisChatStore block of LlamaIndex's chat-store page, run on ours as written.

LlamaIndex mode only (the block hands the store to LlamaIndex's ChatMemoryBuffer). The
address is the session's redis-server, in a database of its own: the page writes raw keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

pytestmark = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
    "llama-index test environment runs this)",
)

DOCS_DB = 5


@pytest.fixture
def docs_redis_url(redis_url: str) -> Iterator[str]:
    """The session's server, database ``DOCS_DB``, emptied before and after the test."""
    url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{DOCS_DB}"))
    with redis.Redis.from_url(url) as raw:
        raw.flushdb()
        yield url
        raw.flushdb()


def test_docs_redis_chat_store_in_chat_memory_buffer(docs_redis_url: str) -> None:
    """RedisChatStore(redis_url=..., ttl=300) goes into ChatMemoryBuffer and a chat engine.

    If this fails: the constructor does not take the page's arguments, the store is not
    LlamaIndex's BaseChatStore, or the ttl is not set on the conversation's key.
    """
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.core.llms import MockLLM
    from llama_index.core.memory import ChatMemoryBuffer
    from llama_index.storage.chat_store.redis import RedisChatStore

    chat_store = RedisChatStore(redis_url=docs_redis_url, ttl=300)

    chat_memory = ChatMemoryBuffer.from_defaults(
        token_limit=3000,
        chat_store=chat_store,
        chat_store_key="user1",
    )
    chat_engine = SimpleChatEngine(
        memory=chat_memory, llm=MockLLM(max_tokens=3), prefix_messages=[]
    )
    assert str(chat_engine.chat("Hello.")) == "text text text"
    assert [m.content for m in chat_store.get_messages("user1")] == ["Hello.", "text text text"]
    with redis.Redis.from_url(docs_redis_url) as raw:
        assert raw.llen("user1") == 2
        assert 0 < raw.ttl("user1") <= 300
    chat_store.close()
