"""PostgreSQL chat store for LlamaIndex apps: one row per message, atomic appends and pops."""

from llama_index.storage.chat_store.postgres.engine import ConnectorEngine
from llama_index.storage.chat_store.postgres.google import (
    GoogleChatStore,
    GoogleConnectorEngine,
    connector_login,
)
from llama_index.storage.chat_store.postgres.store import PostgresChatStore

__all__ = [
    "ConnectorEngine",
    "GoogleChatStore",
    "GoogleConnectorEngine",
    "PostgresChatStore",
    "connector_login",
]
