"""Redis chat store for LlamaIndex: one list per conversation, atomic Lua scripts, sliding TTL."""

from llama_index.storage.chat_store.redis._store import RedisChatStore

__all__ = ["RedisChatStore"]
