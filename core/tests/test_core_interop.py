"""Core's one switch: LlamaIndex's classes when llama-index-core is installed, else its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llama_index.storage.chat_store.core import message_from_json, message_to_json
from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

DATA = Path(__file__).parent / "data"


@pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="needs llama-index-core (the llama-index test environment runs this)",
)
def test_llama_index_messages_round_trip_byte_identically_as_llama_index_objects() -> None:
    from llama_index.core.llms import ChatMessage as LlamaIndexChatMessage

    for line in (DATA / "messages.jsonl").read_text(encoding="utf-8").split("\n")[:-1]:
        message = message_from_json(line)
        assert type(message) is LlamaIndexChatMessage
        assert message == LlamaIndexChatMessage.model_validate_json(line)
        assert message_to_json(message) == line


def test_blocked_llama_index_core_gives_the_stand_alone_model() -> None:
    # Block the import the way a missing distribution would, in a fresh interpreter.
    script = (
        "import sys\n"
        "sys.modules['llama_index.core'] = None\n"
        "from llama_index.storage.chat_store.core import (\n"
        "    BackendImportError, ChatMessage, SimpleChatStore)\n"
        "store = SimpleChatStore()\n"
        "store.add_message('k', ChatMessage(role='critic', content='x'))\n"
        "print(type(store.get_messages('k')[0]).__module__)\n"
        "print([c.__module__ for c in type(store).__mro__ if c.__name__ == 'BaseChatStore'])\n"
        "try:\n"
        "    store.as_llama_index()\n"
        "except BackendImportError as exc:\n"
        "    print(exc)\n"
        "print(sorted(m for m, v in sys.modules.items() if 'llama_index.core' in m and v))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "llama_index.storage.chat_store.core._model"
    assert out[1] == "['llama_index.storage.chat_store.core.store']"  # LlamaIndex's is not a base
    assert "pip install 'llama-index-storage-chat-store-core[llama-index]'" in out[2]
    assert out[3] == "[]"


def test_unknown_constructor_argument_is_a_type_error_naming_it() -> None:
    from llama_index.storage.chat_store.core import JsonFileChatStore, SimpleChatStore

    with pytest.raises(TypeError, match=r"unexpected argument 'tll'"):
        SimpleChatStore(tll=300)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"'pth' \(did you mean 'path'\?\)"):
        JsonFileChatStore(pth="/tmp/x.json")  # type: ignore[call-arg]
