"""Chat history in Amazon DynamoDB: one item per message, exact concurrent appends.

``DynamoDBChatStore(table_name=..., ...)`` keeps LlamaIndex's constructor; on LlamaIndex's
hash-key-only table it reads and writes LlamaIndex's single-item layout.
"""

from llama_index.storage.chat_store.dynamodb._chunks import MAX_MESSAGE_BYTES
from llama_index.storage.chat_store.dynamodb._native_meta import KEYS_INDEX
from llama_index.storage.chat_store.dynamodb.store import DynamoDBChatStore

__all__ = ["KEYS_INDEX", "MAX_MESSAGE_BYTES", "DynamoDBChatStore"]
