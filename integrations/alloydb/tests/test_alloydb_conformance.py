"""AlloyDBChatStore against the suite: from_instance end to end through a local connector.

The connectors have the methods and arguments of Google's AlloyDB connectors and open
plain connections to the session's PostgreSQL (pg8000 for sync, asyncpg for async).
"""

from __future__ import annotations

from llama_index.storage.chat_store.alloydb import AlloyDBChatStore
from llama_index.storage.chat_store.postgres.testing import (
    GoogleStoreConformance,
    LocalAsyncConnector,
    LocalConnector,
)


def connectors(host: str, port: int) -> tuple[LocalConnector, LocalAsyncConnector]:
    """AlloyDB's two connectors, reaching ``host:port``."""
    return LocalConnector(host, port), LocalAsyncConnector(host, port)


class TestAlloyDBConformance(GoogleStoreConformance):
    store_class = AlloyDBChatStore
    instance = ("my-project", "us-central1", "my-cluster", "my-instance")
    connectors = connectors
