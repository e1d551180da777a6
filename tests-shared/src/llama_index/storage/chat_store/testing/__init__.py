"""The conformance suite and real-server fixtures for chat stores.

Subclass :class:`ChatStoreConformance` in a test module and override its fixtures;
the server fixtures (``redis_url``, ``postgres_url``, ...) come from the backends' ``testing``
subpackages, registered by the pytest plugin :mod:`llama_index.storage.chat_store.testing.services`
(loaded automatically).
"""

from llama_index.storage.chat_store.testing.conformance import ChatStoreConformance, requires
from llama_index.storage.chat_store.testing.samples import (
    HOSTILE_KEYS,
    every_block_type,
    numbered,
    tricky_messages,
)

__all__ = [
    "HOSTILE_KEYS",
    "ChatStoreConformance",
    "every_block_type",
    "numbered",
    "requires",
    "tricky_messages",
]
