"""DynamoDB for tests: a moto server on loopback with DynamoDB's atomic requests, and a fault proxy.

For your own app's tests too (needs the ``testing`` extra: ``moto[server]`` and
``llama-index-storage-chat-store-testing``): ``start_moto()`` returns a running, restartable
server on a free port (``http://127.0.0.1:PORT``; any access key works). Under pytest the
``dynamodb_url`` session fixture comes from here (``CHAT_STORE_TEST_DYNAMODB_URL`` points it
at a moto server or DynamoDB Local of yours).
"""

from llama_index.storage.chat_store.dynamodb.testing._server import (
    DynamoDBFaultProxy,
    dynamodb_url,
    moto_ping,
    moto_reset,
    serve_moto,
    start_moto,
)

__all__ = [
    "DynamoDBFaultProxy",
    "dynamodb_url",
    "moto_ping",
    "moto_reset",
    "serve_moto",
    "start_moto",
]
