"""Chat histories in Alibaba Cloud Tablestore, for LlamaIndex apps."""

from llama_index.storage.chat_store.tablestore.store import DEFAULT_TABLE_NAME, TablestoreChatStore

__all__ = ["DEFAULT_TABLE_NAME", "TablestoreChatStore"]
