"""AlloyDB chat store for LlamaIndex apps, sharing tables with llama-index-alloydb-pg."""

from llama_index.storage.chat_store.alloydb.engine import AlloyDBEngine
from llama_index.storage.chat_store.alloydb.store import AlloyDBChatStore

__all__ = ["AlloyDBChatStore", "AlloyDBEngine"]
