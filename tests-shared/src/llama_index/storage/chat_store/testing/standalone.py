"""The stand-alone mode: a store without ``llama-index-core`` installed.

:class:`~llama_index.storage.chat_store.testing.ChatStoreConformance` includes these tests
when ``llama-index-core`` is not installed (in place of
:mod:`~llama_index.storage.chat_store.testing.llama_index_memory`), so every backend runs
them in its stand-alone test environment.
"""

from __future__ import annotations

import sys

import pytest

from llama_index.storage.chat_store.core import (
    BackendImportError,
    BaseChatStore,
    ChatMessage,
    message_to_json,
)
from llama_index.storage.chat_store.testing.samples import (
    UNKNOWN_TYPES_JSON,
    unknown_types_message,
)

__all__ = ["StandaloneTests"]


class StandaloneTests:
    """Core's own message model, with nothing of LlamaIndex imported."""

    def test_nothing_imports_llama_index_core(self, store: BaseChatStore) -> None:
        """Using the store imports no ``llama_index.core`` module.

        If this fails: the backend imports LlamaIndex directly instead of through core.
        """
        store.add_message("user1", ChatMessage(role="user", content="hi"))
        store.get_messages("user1")
        assert not [name for name in sys.modules if name.startswith("llama_index.core")]

    def test_unknown_roles_and_block_types_survive(self, store: BaseChatStore) -> None:
        """A message of a later version (unknown role and block type) comes back byte for byte.

        If this fails: the backend re-encodes messages instead of using core's serializer.
        """
        store.add_message("user1", unknown_types_message())
        assert [message_to_json(m) for m in store.get_messages("user1")] == [UNKNOWN_TYPES_JSON]

    def test_as_llama_index_says_what_to_install(self, store: BaseChatStore) -> None:
        """``as_llama_index()`` names the extra that makes the store LlamaIndex's.

        If this fails: core's switch thinks llama-index-core is installed.
        """
        with pytest.raises(BackendImportError, match=r"\[llama-index\]"):
            store.as_llama_index()
