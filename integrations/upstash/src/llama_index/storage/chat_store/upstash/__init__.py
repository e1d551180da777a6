"""Upstash Redis chat store for LlamaIndex: the Redis store's layout and scripts over REST."""

from llama_index.storage.chat_store.upstash._store import UpstashChatStore

__all__ = ["UpstashChatStore"]
