"""The AlloyDB block of LlamaIndex's chat-store page, run on ours as written.

LlamaIndex mode only (the block hands the store to LlamaIndex's ChatMemoryBuffer and a
SimpleChatEngine; llama-index-core's MockLLM stands in for Vertex). The page imports from
Google's ``llama_index_alloydb_pg``; ours is ``llama_index.storage.chat_store.alloydb``, with
the same names and calls. ``from_instance`` runs as written: AlloyDB's default connectors are
replaced by the local ones of the suite, which reach the session's PostgreSQL. The block,
the same for Cloud SQL but for its names, is the suite's ``check_google_cloud_block``.
"""

from __future__ import annotations

import pytest

from llama_index.storage.chat_store.alloydb import AlloyDBChatStore, AlloyDBEngine
from llama_index.storage.chat_store.postgres.testing import (
    LocalAsyncConnector,
    LocalConnector,
    use_local_connectors,
)
from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

pytestmark = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
    "llama-index test environment runs this)",
)

INSTANCE = {  # from_instance's keywords as the page writes them (values: placeholders)
    "project_id": "my-project", "region": "us-central1", "cluster": "my-cluster",
    "instance": "my-instance", "user": "test", "password": "alloy-not-a-real-password-8T",
}  # fmt: skip


@pytest.fixture
def database(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session database's name; AlloyDB's default connectors reach it locally."""

    def connectors(host: str, port: int) -> tuple[LocalConnector, LocalAsyncConnector]:
        return LocalConnector(host, port), LocalAsyncConnector(host, port)

    return use_local_connectors(monkeypatch, AlloyDBEngine, connectors, postgres_url)


def test_docs_alloydb_chat_store_in_simple_chat_engine(
    database: str, google_cloud_table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """from_instance + init_chat_store_table + create_sync run a SimpleChatEngine turn.

    If this fails: the engine or store does not take the page's keywords, the table is not
    created, or the store is not LlamaIndex's BaseChatStore.
    """
    from llama_index.storage.chat_store.testing.llama_index_docs import check_google_cloud_block

    check_google_cloud_block(
        AlloyDBEngine,
        AlloyDBChatStore,
        capsys,
        table_name=google_cloud_table,
        database=database,
        **INSTANCE,
    )
