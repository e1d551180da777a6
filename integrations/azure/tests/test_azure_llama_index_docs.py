"""The AzureChatStore block of LlamaIndex's chat-store page, run on ours as written.

LlamaIndex mode only (the block uses LlamaIndex's ChatMemoryBuffer, SimpleChatEngine and
``Settings.llm``, here llama-index-core's MockLLM). The account and key are Azurite's
well-known ones and the address the session's Azurite (``endpoint=``, which the page's Azure
account name implies); the ``ChatUser`` table is dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.data.tables import TableServiceClient

from llama_index.storage.chat_store.azure.testing import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_connection_string,
)
from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

pytestmark = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
    "llama-index test environment runs this)",
)

PAGE_TABLE = "ChatUser"


@pytest.fixture
def azurite(azurite_table_endpoint: str) -> Iterator[str]:
    """The session's Azurite, without the page's table before and after the test."""
    service = TableServiceClient.from_connection_string(
        azurite_connection_string(azurite_table_endpoint)
    )
    with service:
        service.delete_table(PAGE_TABLE)
        yield azurite_table_endpoint
        service.delete_table(PAGE_TABLE)


def test_docs_azure_chat_store_in_simple_chat_engine(
    azurite: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """from_account_and_key(..., chat_table_name="ChatUser") runs a SimpleChatEngine turn.

    If this fails: from_account_and_key does not take the page's keywords, the table is not
    created on first use, or the store is not LlamaIndex's BaseChatStore.
    """
    from llama_index.core import Settings
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.core.llms import MockLLM
    from llama_index.core.memory import ChatMemoryBuffer
    from llama_index.storage.chat_store.azure import AzureChatStore

    # Settings.llm would resolve to OpenAI (a network and an API key); the mock stands in.
    monkeypatch.setattr(Settings, "_llm", MockLLM(max_tokens=3))

    chat_store = AzureChatStore.from_account_and_key(
        account_name=AZURITE_ACCOUNT,
        account_key=AZURITE_KEY,
        endpoint=azurite,
        chat_table_name="ChatUser",
    )

    memory = ChatMemoryBuffer.from_defaults(
        token_limit=3000,
        chat_store=chat_store,
        chat_store_key="conversation1",
    )

    chat_engine = SimpleChatEngine(memory=memory, llm=Settings.llm, prefix_messages=[])

    response = chat_engine.chat("Hello.")
    print(response)
    assert capsys.readouterr().out == "text text text\n"
    stored = chat_store.get_messages("conversation1")
    assert [m.content for m in stored] == ["Hello.", "text text text"]
    chat_store.close()
