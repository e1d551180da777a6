"""Test support for Postgres-family packages (needs pytest and the chat store test suite)."""

from llama_index.storage.chat_store.postgres.testing.google import (
    GoogleStoreConformance,
    open_google_store,
    use_local_connectors,
)

__all__ = ["GoogleStoreConformance", "open_google_store", "use_local_connectors"]
