"""Chat history in Azure Table Storage / Cosmos DB Table API, one entity per message."""

from llama_index.storage.chat_store.azure.store import AzureChatStore, ServiceMode

__all__ = ["AzureChatStore", "ServiceMode"]
