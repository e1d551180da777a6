"""The UpstashChatStore blocks of LlamaIndex's chat-store page, run on ours as written.

LlamaIndex mode only (the blocks use LlamaIndex's ChatMemoryBuffer and messages). The URL
and token are the session's Upstash REST endpoint (the bridge in front of a real Redis
unless ``CHAT_STORE_TEST_UPSTASH_URL`` points at a real database); the page writes raw keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED
from llama_index.storage.chat_store.upstash import UpstashChatStore
from llama_index.storage.chat_store.upstash.testing import UpstashEndpoint

pytestmark = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
    "llama-index test environment runs this)",
)

PAGE_KEYS = ("user1", "conversation1")


@pytest.fixture
def chat_store(upstash_rest: UpstashEndpoint) -> Iterator[UpstashChatStore]:
    """The page's store on the session's endpoint; its keys are removed before and after."""
    chat_store = UpstashChatStore(
        redis_url=upstash_rest.url,
        redis_token=upstash_rest.token,
        ttl=300,  # Optional: Time to live in seconds
    )
    for key in PAGE_KEYS:
        chat_store.delete_messages(key)
    yield chat_store
    for key in PAGE_KEYS:
        chat_store.delete_messages(key)
    chat_store.close()


def test_docs_upstash_chat_store_in_chat_memory_buffer(chat_store: UpstashChatStore) -> None:
    """UpstashChatStore(redis_url, redis_token, ttl=300) goes into ChatMemoryBuffer and chats.

    If this fails: the store is not LlamaIndex's BaseChatStore, or get/add do not behave as
    ChatMemoryBuffer calls them over the REST API.
    """
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.core.llms import MockLLM
    from llama_index.core.memory import ChatMemoryBuffer

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


def test_docs_upstash_async_example(
    chat_store: UpstashChatStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page's async example runs with asyncio.run and prints LlamaIndex's messages.

    If this fails: an async_* method is missing, binds its client to a closed event loop, or
    returns messages of another class than LlamaIndex's.
    """
    from llama_index.core.llms import ChatMessage

    async def main() -> None:
        # Add messages
        messages = [
            ChatMessage(content="Hello", role="user"),
            ChatMessage(content="Hi there!", role="assistant"),
        ]
        await chat_store.async_set_messages("conversation1", messages)

        # Retrieve messages
        retrieved_messages = await chat_store.async_get_messages("conversation1")
        print(retrieved_messages)
        assert retrieved_messages == messages

        # Delete last message
        deleted_message = await chat_store.async_delete_last_message("conversation1")
        print(f"Deleted message: {deleted_message}")

    asyncio.run(main())
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[ChatMessage(role=<MessageRole.USER: 'user'>")
    assert printed[1] == "Deleted message: assistant: Hi there!"
    assert [m.content for m in chat_store.get_messages("conversation1")] == ["Hello"]
