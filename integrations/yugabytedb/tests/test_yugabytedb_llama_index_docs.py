"""The YugabyteDBChatStore block of LlamaIndex's chat-store page, run on ours as written.

LlamaIndex mode only (the block hands the store to LlamaIndex's ChatMemoryBuffer). The
address is the session's ``yugabytedb+psycopg2://...?load_balance=true`` URL: PostgreSQL
with YugabyteDB's SQL shims unless ``CHAT_STORE_TEST_YUGABYTEDB_URL`` names a real cluster,
so the smart driver's load-balancing path runs. The store uses its default table, which
the test empties afterwards.
"""

from __future__ import annotations

import pytest

from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

pytestmark = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
    "llama-index test environment runs this)",
)


def test_docs_yugabytedb_chat_store_from_uri(yugabytedb_url: str) -> None:
    """YugabyteDBChatStore.from_uri(uri="yugabytedb+psycopg2://...?load_balance=true") works.

    If this fails: from_uri does not take the page's ``uri=`` keyword, scheme or smart-driver
    parameters, or the store is not LlamaIndex's BaseChatStore.
    """
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.core.llms import MockLLM
    from llama_index.core.memory import ChatMemoryBuffer
    from llama_index.storage.chat_store.yugabytedb import YugabyteDBChatStore

    assert "load_balance=true" in yugabytedb_url
    chat_store = YugabyteDBChatStore.from_uri(
        uri=yugabytedb_url,
    )

    chat_memory = ChatMemoryBuffer.from_defaults(
        token_limit=3000,
        chat_store=chat_store,
        chat_store_key="user1",
    )
    try:
        chat_engine = SimpleChatEngine(
            memory=chat_memory, llm=MockLLM(max_tokens=3), prefix_messages=[]
        )
        assert str(chat_engine.chat("Hello.")) == "text text text"
        assert [m.content for m in chat_store.get_messages("user1")] == [
            "Hello.",
            "text text text",
        ]
    finally:
        chat_store.clear()
        chat_store.close()
