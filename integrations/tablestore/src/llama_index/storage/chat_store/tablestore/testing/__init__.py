"""Tablestore for tests: an emulator speaking the SDK's wire protocol on loopback.

For your own app's tests too (needs ``llama-index-storage-chat-store-testing``, the
``testing`` extra): ``start_tablestore()`` serves in this process on a free port
(``emulator.endpoint``, ``emulator.instance_name``, ``emulator.access_key_id`` and
``emulator.access_key_secret`` are what ``OTSClient`` takes; ``emulator.url`` is the same as one
URL). Under pytest the ``tablestore_url`` and ``tablestore_connection`` session fixtures come
from here (``CHAT_STORE_TEST_TABLESTORE_URL`` points them at a real instance).
"""

from llama_index.storage.chat_store.tablestore.testing._server import (
    TablestoreConnection,
    TablestoreEmulator,
    start_tablestore,
    start_tablestore_process,
    tablestore_connection,
    tablestore_url,
)

__all__ = [
    "TablestoreConnection",
    "TablestoreEmulator",
    "start_tablestore",
    "start_tablestore_process",
    "tablestore_connection",
    "tablestore_url",
]
