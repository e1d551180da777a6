"""Cloud SQL's PostgresChatStore against the suite: from_instance through a local connector.

The connector has the methods and arguments of Google's Cloud SQL connector and opens
plain connections to the session's PostgreSQL (pg8000 for sync, asyncpg for async).
"""

from __future__ import annotations

from llama_index.storage.chat_store.cloud_sql import PostgresChatStore
from llama_index.storage.chat_store.postgres.testing import GoogleStoreConformance, LocalConnector


def connectors(host: str, port: int) -> tuple[LocalConnector, LocalConnector]:
    """Cloud SQL's one connector (sync and async), reaching ``host:port``."""
    local = LocalConnector(host, port)
    return local, local


class TestCloudSQLConformance(GoogleStoreConformance):
    store_class = PostgresChatStore
    instance = ("my-project", "us-central1", "my-instance")
    connectors = connectors
