"""Acme's store against the published conformance suite, built through the URL registry."""

import functools
from pathlib import Path

import pytest
from acme_chat_store import AcmeChatStore

from llama_index.storage.chat_store.core import (
    ChatMessage,
    chat_store_from_dict,
    chat_store_from_url,
    registered_schemes,
)
from llama_index.storage.chat_store.testing import ChatStoreConformance


def test_acme_scheme_is_registered() -> None:
    assert registered_schemes()["acme"] == "acme-chat-store"
    store = chat_store_from_url("acme://blue")
    assert isinstance(store, AcmeChatStore)
    assert store.label == "blue"
    assert chat_store_from_dict(store.to_dict()).label == "blue"


class TestAcmeConformance(ChatStoreConformance):
    @pytest.fixture
    def store_factory(self):
        return functools.partial(chat_store_from_url, "acme://tests")

    @pytest.fixture
    def other_store(self):
        return chat_store_from_url("acme://other")

    @pytest.fixture
    def make_corrupt(self, tmp_path: Path):
        def corrupt(key):
            good = AcmeChatStore(store={key: [ChatMessage(content="fine")]}).json()
            path = tmp_path / "acme.json"
            path.write_text(good.replace("]}", ']},{"role":"user","blocks":42}', 1), "utf-8")
            return AcmeChatStore.from_persist_path(path)

        return corrupt
