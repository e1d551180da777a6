"""SimpleChatStore against the conformance suite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage, SimpleChatStore
from llama_index.storage.chat_store.testing import ChatStoreConformance


class TestSimpleChatStoreConformance(ChatStoreConformance):
    @pytest.fixture
    def store_factory(self) -> Callable[[], BaseChatStore]:
        return SimpleChatStore

    @pytest.fixture
    def other_store(self) -> BaseChatStore:
        return SimpleChatStore()

    @pytest.fixture
    def make_corrupt(self, tmp_path: Path) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            path = tmp_path / "chat_store.json"
            store = SimpleChatStore()
            store.add_message(key, ChatMessage(content="fine"))
            text = store.json().replace('"blocks":[', '"blocks":7,"x":[', 1)
            text = text.replace("]}", ']},{"role":"user","blocks":42}', 1)
            path.write_text(text, encoding="utf-8")
            return SimpleChatStore.from_persist_path(path)

        return corrupt
