"""The Cloud SQL for PostgreSQL block of LlamaIndex's chat-store page, run on ours as written.

LlamaIndex mode only (the block hands the store to LlamaIndex's ChatMemoryBuffer and a
SimpleChatEngine; llama-index-core's MockLLM stands in for Vertex). The page imports from
Google's ``llama_index_cloud_sql_pg``; ours is ``llama_index.storage.chat_store.cloud_sql``,
with the same names and calls. ``from_instance`` runs as written: Cloud SQL's default
connectors are replaced by the suite's local one, which reaches the session's PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pg8000.dbapi
import pytest

from llama_index.storage.chat_store.cloud_sql import PostgresChatStore, PostgresEngine
from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED
from llama_index.storage.chat_store.testing.services import LocalConnector

pytestmark = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
    "llama-index test environment runs this)",
)

PROJECT_ID, REGION, INSTANCE = "my-project", "us-central1", "my-instance"
USER, PASSWORD = "test", "cloudsql-not-a-real-password-4W"


@pytest.fixture
def database(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session database's name; Cloud SQL's default connectors reach it locally."""
    parts = urlsplit(postgres_url)
    host, port = str(parts.hostname), int(parts.port or 5432)
    local = staticmethod(lambda quota_project: LocalConnector(host, port))
    monkeypatch.setattr(PostgresEngine, "connector_factory", local)
    monkeypatch.setattr(PostgresEngine, "async_connector_factory", local)
    return parts.path.lstrip("/")


@pytest.fixture
def table_name(postgres_url: str) -> Iterator[str]:
    """A table name no other test uses; the table is dropped afterwards."""
    name = f"docs_{uuid.uuid4().hex[:12]}"
    yield name
    parts = urlsplit(postgres_url)
    raw = pg8000.dbapi.connect(
        user=USER, host=parts.hostname, port=parts.port or 5432, database=parts.path.lstrip("/")
    )
    raw.cursor().execute(f'DROP TABLE IF EXISTS public."{name}"')
    raw.commit()
    raw.close()


def test_docs_cloud_sql_chat_store_in_simple_chat_engine(
    database: str, table_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """from_instance + init_chat_store_table + create_sync run a SimpleChatEngine turn.

    If this fails: the engine or store does not take the page's keywords, the table is not
    created, or the store is not LlamaIndex's BaseChatStore.
    """
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.core.llms import MockLLM
    from llama_index.core.memory import ChatMemoryBuffer

    DATABASE, TABLE_NAME = database, table_name  # noqa: N806 (the page's placeholders)

    engine = PostgresEngine.from_instance(
        project_id=PROJECT_ID,
        region=REGION,
        instance=INSTANCE,
        database=DATABASE,
        user=USER,
        password=PASSWORD,
    )

    engine.init_chat_store_table(table_name=TABLE_NAME)

    chat_store = PostgresChatStore.create_sync(
        engine=engine,
        table_name=TABLE_NAME,
    )

    memory = ChatMemoryBuffer.from_defaults(
        token_limit=3000,
        chat_store=chat_store,
        chat_store_key="user1",
    )

    llm = MockLLM(max_tokens=3)

    chat_engine = SimpleChatEngine(memory=memory, llm=llm, prefix_messages=[])

    response = chat_engine.chat("Hello.")

    print(response)
    assert capsys.readouterr().out == "text text text\n"
    assert [m.content for m in chat_store.get_messages("user1")] == ["Hello.", "text text text"]
    chat_store.close()
