"""The TablestoreChatStore block of LlamaIndex's chat-store page, run on ours as written.

LlamaIndex mode only (the block hands the store to LlamaIndex's ChatMemoryBuffer). Endpoint,
instance and keys are the session's Tablestore (the emulator unless configured); the store
uses its default table, which the page creates and the test drops afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.tablestore.testing import TablestoreConnection
from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

pytestmark = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
    "llama-index test environment runs this)",
)

DEFAULT_TABLE = "llama_index_chat_store_v1"


@pytest.fixture
def no_default_tables(raw_client: Any) -> Iterator[None]:
    """Drop the default table (and its ``_meta`` table) before and after the test."""

    def drop() -> None:
        existing = set(raw_client.list_table())
        for table in (DEFAULT_TABLE, f"{DEFAULT_TABLE}_meta"):
            if table in existing:
                raw_client.delete_table(table)

    drop()
    yield
    drop()


@pytest.mark.usefixtures("no_default_tables")
def test_docs_tablestore_chat_store_in_chat_memory_buffer(
    tablestore_connection: TablestoreConnection,
) -> None:
    """TablestoreChatStore(endpoint, instance_name, keys) + create_table_if_not_exist() works.

    If this fails: the constructor does not take the page's keywords, the default table is
    not created, or the store is not LlamaIndex's BaseChatStore.
    """
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.core.llms import MockLLM
    from llama_index.core.memory import ChatMemoryBuffer
    from llama_index.storage.chat_store.tablestore import TablestoreChatStore

    c = tablestore_connection
    # 1. create tablestore vector store
    chat_store = TablestoreChatStore(
        endpoint=c.endpoint,
        instance_name=c.instance_name,
        access_key_id=c.access_key_id,
        access_key_secret=c.access_key_secret,
    )
    # You need to create a table for the first use
    chat_store.create_table_if_not_exist()

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
    chat_store.close()
