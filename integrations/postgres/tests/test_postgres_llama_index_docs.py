"""The PostgresChatStore block of LlamaIndex's chat-store page, run on ours as written.

LlamaIndex mode only (the block hands the store to LlamaIndex's ChatMemoryBuffer). The
address is this module's database on the session's PostgreSQL (see conftest.py), with the
page's ``postgresql+asyncpg`` scheme; the store uses its default table.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

pytestmark = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
    "llama-index test environment runs this)",
)


def test_docs_postgres_chat_store_from_uri(database_url_for_module: str) -> None:
    """PostgresChatStore.from_uri(uri="postgresql+asyncpg://...") goes into ChatMemoryBuffer.

    If this fails: from_uri does not take the page's ``uri=`` keyword or scheme, or the
    store is not LlamaIndex's BaseChatStore.
    """
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.core.llms import MockLLM
    from llama_index.core.memory import ChatMemoryBuffer
    from llama_index.storage.chat_store.postgres import PostgresChatStore

    uri = urlunsplit(urlsplit(database_url_for_module)._replace(scheme="postgresql+asyncpg"))
    chat_store = PostgresChatStore.from_uri(
        uri=uri,
    )

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
    with psycopg.connect(database_url_for_module) as raw:
        rows = raw.execute("SELECT count(*) FROM public.chatstore WHERE key = 'user1'").fetchone()
    assert rows is not None
    assert rows[0] >= 1
