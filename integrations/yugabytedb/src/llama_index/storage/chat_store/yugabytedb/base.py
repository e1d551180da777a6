"""LlamaIndex's import path: ``from llama_index.storage.chat_store.yugabytedb.base import ...``."""

from llama_index.storage.chat_store.yugabytedb.store import YugabyteDBChatStore

__all__ = ["YugabyteDBChatStore"]
