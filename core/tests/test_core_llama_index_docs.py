"""The SimpleChatStore blocks of LlamaIndex's chat-store page, run on ours as written.

LlamaIndex mode only: the blocks hand the store to LlamaIndex's ChatMemoryBuffer. The page
saves to a relative ``chat_store.json``; the tests run in a temporary working directory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from llama_index.storage.chat_store.core import SimpleChatStore
from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

pytestmark = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
    "llama-index test environment runs this)",
)

if LLAMA_INDEX_INSTALLED:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.memory import ChatMemoryBuffer
    from llama_index.core.storage.chat_store import SimpleChatStore as LlamaIndexSimpleChatStore


def _conversation() -> list[ChatMessage]:
    return [
        ChatMessage(role="user", content="Hello."),
        ChatMessage(role="assistant", content="Hi! ünïcödé 😀"),
    ]


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in an empty working directory (the page writes ``chat_store.json``)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_docs_simple_chat_store_persists_and_loads(in_tmp_dir: Path) -> None:
    """The page's SimpleChatStore + ChatMemoryBuffer, persist and from_persist_path work as written.

    If this fails: SimpleChatStore is not LlamaIndex's BaseChatStore, or persist /
    from_persist_path do not take the page's keyword arguments.
    """
    chat_store = SimpleChatStore()
    chat_memory = ChatMemoryBuffer.from_defaults(
        token_limit=3000,
        chat_store=chat_store,
        chat_store_key="user1",
    )
    for message in _conversation():
        chat_memory.put(message)
    chat_store.persist(persist_path="chat_store.json")
    loaded_chat_store = SimpleChatStore.from_persist_path(persist_path="chat_store.json")
    assert loaded_chat_store.get_messages("user1") == _conversation()
    assert (in_tmp_dir / "chat_store.json").is_file()


def test_docs_persisted_file_loads_in_llama_index(in_tmp_dir: Path) -> None:
    """A file persisted by ours loads in LlamaIndex's own SimpleChatStore, equal.

    If this fails: persist writes another file format than LlamaIndex's. (The other way round
    is test_core_simple.py's, on files LlamaIndex wrote: LlamaIndex's own persist fails under
    pydantic 2.14, its serializer calls pydantic's handler with an argument it no longer takes.)
    """
    ours = SimpleChatStore()
    ours.set_messages("user1", _conversation())
    ours.persist(persist_path="chat_store.json")
    theirs = LlamaIndexSimpleChatStore.from_persist_path(persist_path="chat_store.json")
    assert theirs.get_messages("user1") == _conversation()


def test_docs_simple_chat_store_string_round_trip() -> None:
    """json() / parse_raw() as on the page round-trip the store, with no deprecation warning.

    If this fails: json() or parse_raw() is pydantic's deprecated v1 method instead of the
    store's own, or their format differs from LlamaIndex's.
    """
    chat_store = SimpleChatStore()
    chat_store.set_messages("user1", _conversation())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chat_store_string = chat_store.json()
        loaded_chat_store = SimpleChatStore.parse_raw(chat_store_string)
    assert loaded_chat_store.get_messages("user1") == _conversation()
    theirs = LlamaIndexSimpleChatStore.model_validate_json(chat_store_string)
    assert theirs.get_messages("user1") == _conversation()
