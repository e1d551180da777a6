"""Cloud SQL for PostgreSQL chat store for LlamaIndex apps (tables shared with Google's)."""

from llama_index.storage.chat_store.cloud_sql.engine import PostgresEngine
from llama_index.storage.chat_store.cloud_sql.store import PostgresChatStore

__all__ = ["PostgresChatStore", "PostgresEngine"]
