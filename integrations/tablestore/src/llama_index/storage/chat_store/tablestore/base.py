"""LlamaIndex's import path: ``from llama_index.storage.chat_store.tablestore.base import ...``."""

from llama_index.storage.chat_store.tablestore.store import TablestoreChatStore

__all__ = ["TablestoreChatStore"]
