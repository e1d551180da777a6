"""LlamaIndex's import path: ``from llama_index.storage.chat_store.postgres.base import ...``."""

from llama_index.storage.chat_store.postgres.store import PostgresChatStore

__all__ = ["PostgresChatStore"]
