"""Azure Table Storage for tests: Azurite (Microsoft's emulator) on loopback.

For your own app's tests too (needs ``llama-index-storage-chat-store-testing``, the
``testing`` extra, and Azurite from npm: ``integrations/azure/ci/install``): ``start_azurite()``
returns a running server on a free port; ``azurite_connection_string(azurite_endpoint(port))``
connects to its development account. Under pytest the ``azurite_table_endpoint`` session
fixture comes from here (``CHAT_STORE_TEST_AZURITE_URL`` points it at an Azurite of yours).
"""

from llama_index.storage.chat_store.azure.testing._server import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_connection_string,
    azurite_endpoint,
    azurite_ready,
    azurite_table_endpoint,
    find_azurite,
    node_prefix,
    start_azurite,
)

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "azurite_connection_string",
    "azurite_endpoint",
    "azurite_ready",
    "azurite_table_endpoint",
    "find_azurite",
    "node_prefix",
    "start_azurite",
]
