"""LlamaIndex's import path: ``from llama_index.storage.chat_store.upstash.base import ...``."""

from llama_index.storage.chat_store.upstash._store import UpstashChatStore

__all__ = ["UpstashChatStore"]
