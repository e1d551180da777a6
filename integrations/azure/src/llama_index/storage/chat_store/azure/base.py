"""LlamaIndex's import path: ``from llama_index.storage.chat_store.azure.base import ...``."""

from llama_index.storage.chat_store.azure.store import AzureChatStore, ServiceMode

__all__ = ["AzureChatStore", "ServiceMode"]
