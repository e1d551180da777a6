"""LlamaIndex's memory modules over SimpleChatStore, through the interop adapters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llama_index.core.base.llms.types import ChatMessage as LlamaIndexChatMessage
from llama_index.storage.chat_store.core import (
    BaseChatStore,
    ChatMessage,
    SerializationError,
    SimpleChatStore,
    coerce_message,
    message_to_json,
)
from llama_index.storage.chat_store.core.interop import to_llama_index_message
from llama_index.storage.chat_store.testing.llama_index_memory import LlamaIndexMemoryTests

DATA = Path(__file__).parent / "data"


class TestSimpleChatStoreLlamaIndexMemory(LlamaIndexMemoryTests):
    @pytest.fixture
    def store(self) -> BaseChatStore:
        return SimpleChatStore()


def test_llama_index_messages_cross_both_ways_byte_identically() -> None:
    lines = (DATA / "messages.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    for line in lines:
        ours = coerce_message(LlamaIndexChatMessage.model_validate_json(line))
        assert message_to_json(ours) == line
        assert to_llama_index_message(ours).model_dump_json() == line


def test_unknown_role_raises_serialization_error_naming_it() -> None:
    with pytest.raises(SerializationError, match="'critic'"):
        to_llama_index_message(ChatMessage(role="critic", content="x"))


def test_without_llama_index_core_core_imports_and_interop_says_what_to_install() -> None:
    # Block the import the way a missing distribution would, in a fresh interpreter.
    script = (
        "import sys\n"
        "sys.modules['llama_index.core'] = None\n"
        "from llama_index.storage.chat_store.core import SimpleChatStore, BackendImportError\n"
        "try:\n"
        "    SimpleChatStore().as_llama_index()\n"
        "except BackendImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'llama-index-storage-chat-store-core[llama-index]'" in out
