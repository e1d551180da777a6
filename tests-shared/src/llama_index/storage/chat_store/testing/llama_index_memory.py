"""LlamaIndex's memory modules running on a chat store handed to them as it is.

:class:`~llama_index.storage.chat_store.testing.ChatStoreConformance` includes these tests
when ``llama-index-core`` is installed (``llama-index-storage-chat-store-testing[llama-index]``),
so every backend runs them in its LlamaIndex test environment; they use the same ``store``
fixture and no network (the LLM is llama-index-core's own ``MockLLM``).
"""

from __future__ import annotations

import asyncio

import pytest

from llama_index.core.base.llms.types import ChatMessage as LlamaIndexChatMessage
from llama_index.core.base.llms.types import MessageRole as LlamaIndexMessageRole
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import MockLLM
from llama_index.core.memory import ChatMemoryBuffer, ChatSummaryMemoryBuffer, Memory
from llama_index.core.storage.chat_store.base import BaseChatStore as LlamaIndexBaseChatStore
from llama_index.core.storage.chat_store.base_db import MessageStatus
from llama_index.storage.chat_store.core import (
    BaseChatStore,
    ChatMessage,
    InvalidKeyError,
    MessageRole,
)
from llama_index.storage.chat_store.core.interop import (
    DEFAULT_ARCHIVE_SUFFIX,
    LlamaIndexMemoryStore,
)
from llama_index.storage.chat_store.testing.samples import every_block_type, numbered

__all__ = ["LlamaIndexMemoryTests"]

_REPLY = "text text text"  # MockLLM(max_tokens=3) answers this, whatever it is asked


def _texts(messages: list[ChatMessage] | list[LlamaIndexChatMessage]) -> list[str | None]:
    return [m.content for m in messages]


def _turn(i: int) -> list[LlamaIndexChatMessage]:
    """One user/assistant turn of about 25 tokens."""
    words = " ".join(f"w{i}x{j}" for j in range(10))
    return [
        LlamaIndexChatMessage(role="user", content=f"q{i} {words}"),
        LlamaIndexChatMessage(role="assistant", content=f"a{i} {words}"),
    ]


def _memory(store: BaseChatStore, key: str) -> Memory:
    # 200 tokens * 0.5 for chat history: eight turns of ~25 tokens overflow it.
    return Memory.from_defaults(
        session_id=key,
        token_limit=200,
        chat_history_token_ratio=0.5,
        token_flush_size=50,
        chat_store=LlamaIndexMemoryStore(store),
    )


class LlamaIndexMemoryTests:
    """LlamaIndex's ChatMemoryBuffer, ChatSummaryMemoryBuffer and Memory over ``store``."""

    # -- ChatMemoryBuffer (store.as_llama_index()) --------------------------------------------

    def test_chat_engine_keeps_history_in_store(self, store: BaseChatStore) -> None:
        """A SimpleChatEngine's ChatMemoryBuffer writes each turn to the store, in order.

        If this fails: get/add/set do not reach the store as LlamaIndex calls them.
        """
        memory = ChatMemoryBuffer.from_defaults(
            token_limit=3000, chat_store=store, chat_store_key="user1"
        )
        engine = SimpleChatEngine.from_defaults(llm=MockLLM(max_tokens=3), memory=memory)
        assert engine.chat("Hello").response == _REPLY
        engine.chat("And again")
        assert _texts(store.get_messages("user1")) == ["Hello", _REPLY, "And again", _REPLY]
        assert _texts(memory.get_all()) == ["Hello", _REPLY, "And again", _REPLY]

    async def test_chat_engine_keeps_history_in_store_async(self, store: BaseChatStore) -> None:
        """The async chat path (achat) writes each turn through the async store methods.

        If this fails: the async methods LlamaIndex calls (aget_messages,
        async_add_message, aset_messages) are wrong.
        """
        memory = ChatMemoryBuffer.from_defaults(
            token_limit=3000, chat_store=store, chat_store_key="user1"
        )
        engine = SimpleChatEngine.from_defaults(llm=MockLLM(max_tokens=3), memory=memory)
        assert (await engine.achat("Hello")).response == _REPLY
        await engine.achat("And again")
        assert _texts(await store.aget_messages("user1")) == ["Hello", _REPLY, "And again", _REPLY]
        assert _texts(await memory.aget_all()) == ["Hello", _REPLY, "And again", _REPLY]
        await memory.areset()
        assert await store.acount_messages("user1") == 0

    def test_chat_memory_buffer_sees_existing_history(self, store: BaseChatStore) -> None:
        """History written with the store's own API is what the memory returns, windowed.

        If this fails: get_messages loses or reorders messages.
        """
        store.add_messages("user1", numbered(30))
        memory = ChatMemoryBuffer.from_defaults(
            token_limit=40, chat_store=store, chat_store_key="user1"
        )
        recent = memory.get()
        assert 0 < len(recent) < 30
        assert _texts(recent) == [f"m{i}" for i in range(30 - len(recent), 30)]
        memory.put(LlamaIndexChatMessage(role="user", content="new"))
        assert store.count_messages("user1") == 31

    def test_chat_summary_memory_buffer_summarizes_into_store(self, store: BaseChatStore) -> None:
        """ChatSummaryMemoryBuffer past its limit replaces old turns by a summary in the store.

        If this fails: set_messages does not replace atomically.
        """
        memory = ChatSummaryMemoryBuffer.from_defaults(
            llm=MockLLM(max_tokens=3),
            token_limit=120,
            chat_store=store,
            chat_store_key="user1",
        )
        for i in range(8):
            for message in _turn(i):
                memory.put(message)
        memory.get()
        stored = store.get_messages("user1")
        assert stored[0].role == "system"
        assert stored[0].content == _REPLY
        assert _texts(stored)[-1] == _texts(_turn(7))[-1]
        assert len(stored) < 16

    def test_store_is_llama_index_base_chat_store(self, store: BaseChatStore) -> None:
        """The store is LlamaIndex's BaseChatStore and deals in LlamaIndex's message classes.

        If this fails: core's switch did not pick LlamaIndex's classes although
        llama-index-core is installed.
        """
        assert isinstance(store, LlamaIndexBaseChatStore)
        assert store.as_llama_index() is store
        assert ChatMessage is LlamaIndexChatMessage
        assert MessageRole is LlamaIndexMessageRole

    def test_every_block_type_comes_back_equal(self, store: BaseChatStore) -> None:
        """LlamaIndex messages of every block type come back == to the ones written.

        If this fails: a backend stores messages through something other than core's
        serializer, or parses them into another class.
        """
        originals = every_block_type()
        for message in originals:
            store.add_message("user1", message)
        back = store.get_messages("user1")
        assert all(type(m) is LlamaIndexChatMessage for m in back)
        assert back == originals

    def test_deletes_return_llama_index_messages(self, store: BaseChatStore) -> None:
        """delete_message / delete_last_message / delete_messages return LlamaIndex messages.

        If this fails: a delete path parses into another class, or drops the return value.
        """
        store.add_messages("user1", numbered(4))
        assert store.get_keys() == ["user1"]
        removed = store.delete_message("user1", 1)
        assert type(removed) is LlamaIndexChatMessage
        assert removed.content == "m1"
        last = store.delete_last_message("user1")
        assert type(last) is LlamaIndexChatMessage
        assert last.content == "m3"
        assert store.delete_message("user1", 9) is None
        assert _texts(store.delete_messages("user1") or []) == ["m0", "m2"]
        assert store.delete_messages("user1") is None

    # -- Memory (LlamaIndexMemoryStore) ------------------------------------------------------

    def test_memory_archives_past_token_limit(self, store: BaseChatStore) -> None:
        """Memory past its token limit archives the oldest turns under the derived key.

        If this fails: archive_oldest_messages or status handling is wrong.
        """
        memory = _memory(store, "user1")
        sent = [m for i in range(8) for m in _turn(i)]
        for message in sent:
            memory.put(message)
        archived = store.get_messages("user1" + DEFAULT_ARCHIVE_SUFFIX)
        active = store.get_messages("user1")
        assert archived
        assert active
        assert _texts(archived) + _texts(active) == _texts(sent)
        assert active[0].role == "user"
        assert _texts(memory.get_all()) == _texts(sent)
        assert _texts(memory.get()) == _texts(active)

    async def test_memory_archives_past_token_limit_async(self, store: BaseChatStore) -> None:
        """The same through Memory's async API (aput, aget, aget_all, areset).

        If this fails: the adapter's async paths differ from the sync ones.
        """
        memory = _memory(store, "user1")
        sent = [m for i in range(8) for m in _turn(i)]
        for message in sent:
            await memory.aput(message)
        archived = await memory.aget_all(status=MessageStatus.ARCHIVED)
        active = await memory.aget_all(status=MessageStatus.ACTIVE)
        assert archived
        assert _texts(archived) + _texts(active) == _texts(sent)
        assert _texts(await memory.aget()) == _texts(active)
        assert await memory.sql_store.get_keys() == ["user1"]
        await memory.areset(status=MessageStatus.ACTIVE)
        assert await store.acount_messages("user1") == 0
        assert await store.acount_messages("user1" + DEFAULT_ARCHIVE_SUFFIX) == len(archived)
        await memory.areset()
        assert await store.aget_keys() == []

    async def test_memory_store_status_window_and_counts(self, store: BaseChatStore) -> None:
        """limit/offset, counts and get_keys span archived-then-active when status is None.

        If this fails: LlamaIndexMemoryStore's windowing across the two keys is off.
        """
        memory_store = LlamaIndexMemoryStore(store)
        await memory_store.add_messages("s", numbered(5, "a"), status=MessageStatus.ARCHIVED)
        await memory_store.add_messages("s", numbered(5, "b"))
        assert await memory_store.count_messages("s") == 5
        assert await memory_store.count_messages("s", status=None) == 10
        assert await memory_store.count_messages("s", status="archived") == 5
        window = await memory_store.get_messages("s", status=None, offset=3, limit=4)
        assert _texts(window) == ["a3", "a4", "b0", "b1"]
        tail = await memory_store.get_messages("s", status=None, offset=7)
        assert _texts(tail) == ["b2", "b3", "b4"]
        page = await memory_store.get_messages("s", offset=1, limit=2)
        assert _texts(page) == ["b1", "b2"]
        assert await memory_store.get_keys() == ["s"]

    async def test_memory_store_archive_delete_and_set(self, store: BaseChatStore) -> None:
        """archive_oldest / delete_oldest / delete_message / set_messages keep both lists right.

        If this fails: a status operation touches the wrong list.
        """
        memory_store = LlamaIndexMemoryStore(store)
        await memory_store.add_messages("s", numbered(6))
        moved = await memory_store.archive_oldest_messages("s", 2)
        assert _texts(moved) == ["m0", "m1"]
        dropped = await memory_store.delete_oldest_messages("s", 1)
        assert _texts(dropped) == ["m2"]
        removed = await memory_store.delete_message("s", -1)
        assert removed is not None
        assert removed.content == "m5"
        assert _texts(await memory_store.get_messages("s", status=None)) == ["m0", "m1", "m3", "m4"]
        await memory_store.set_messages("s", numbered(2, "n"))
        assert _texts(await memory_store.get_messages("s", status=None)) == ["n0", "n1"]
        assert await memory_store.archive_oldest_messages("s", 0) == []
        with pytest.raises(InvalidKeyError):
            await memory_store.get_messages("s" + DEFAULT_ARCHIVE_SUFFIX)

    def test_memory_from_a_worker_thread_and_two_loops(self, store: BaseChatStore) -> None:
        """Memory's sync wrappers (a fresh loop, maybe in a worker thread) work twice in a row.

        If this fails: the store caches an async client bound to a closed event loop.
        """
        memory = _memory(store, "user1")
        memory.put(LlamaIndexChatMessage(role="user", content="one"))
        asyncio.run(memory.aput(LlamaIndexChatMessage(role="assistant", content="two")))
        asyncio.run(memory.aput(LlamaIndexChatMessage(role="user", content="three")))
        assert _texts(memory.get_all()) == ["one", "two", "three"]
