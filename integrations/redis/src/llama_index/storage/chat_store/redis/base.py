"""LlamaIndex's import path: ``from llama_index.storage.chat_store.redis.base import ...``."""

from llama_index.storage.chat_store.redis._store import RedisChatStore

__all__ = ["RedisChatStore"]
