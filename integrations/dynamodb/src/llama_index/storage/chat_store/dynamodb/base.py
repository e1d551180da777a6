"""LlamaIndex's import path: ``from llama_index.storage.chat_store.dynamodb.base import ...``."""

from llama_index.storage.chat_store.dynamodb.store import DynamoDBChatStore

__all__ = ["DynamoDBChatStore"]
