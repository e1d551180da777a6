"""YugabyteDB chat store for LlamaIndex apps, through YugabyteDB's smart driver."""

from llama_index.storage.chat_store.yugabytedb.store import YugabyteDBChatStore

__all__ = ["YugabyteDBChatStore"]
