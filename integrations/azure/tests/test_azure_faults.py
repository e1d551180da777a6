"""AzureChatStore when a reply is lost: the request reached Azurite and was applied.

A fault proxy (the testing package's) sits between the store and a real Azurite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from azure.data.tables import TableServiceClient

from llama_index.storage.chat_store.azure import AzureChatStore
from llama_index.storage.chat_store.testing.faults import FaultKind, FaultProxy
from llama_index.storage.chat_store.testing.samples import numbered
from llama_index.storage.chat_store.testing.services import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_connection_string,
)

KEY = "conv"
# The meta entity's write: alone, an HTTP request naming the entity by its keys (RowKey
# 'meta'); with the rows (a conversation that fits one transaction), the transaction.
META_WRITE = rb"^(PUT|MERGE|PATCH) [^\r\n]*RowKey=(%27|')meta(%27|')"
TRANSACTION = rb"^POST [^\r\n]*\$batch"


@pytest.fixture
def proxied(azurite_table_endpoint: str) -> Iterator[tuple[AzureChatStore, FaultProxy]]:
    where = urlsplit(azurite_table_endpoint)
    assert where.hostname is not None
    assert where.port is not None
    table = f"F{uuid.uuid4().hex[:16]}"
    with FaultProxy(where.hostname, where.port) as proxy:
        store = AzureChatStore.from_account_and_key(
            AZURITE_ACCOUNT, AZURITE_KEY,
            endpoint=f"http://{proxy.host}:{proxy.port}{where.path}", chat_table_name=table,
        )  # fmt: skip
        yield store, proxy
        store.close()
    service = TableServiceClient.from_connection_string(
        azurite_connection_string(azurite_table_endpoint)
    )
    with service:
        service.delete_table(table)


@pytest.mark.parametrize(("size", "lost"), [(3, TRANSACTION), (150, META_WRITE)])
def test_a_replace_whose_meta_reply_is_lost_keeps_the_new_conversation(
    proxied: tuple[AzureChatStore, FaultProxy], size: int, lost: bytes
) -> None:
    """The SDK retries the meta write, whose condition then fails on our own commit.

    150 messages take the staged path (rows first, then the meta flip): it used to take that
    failure for a conflict, delete the generation it had just committed and report success,
    leaving a conversation whose rows were gone.
    """
    store, proxy = proxied
    store.set_messages(KEY, numbered(4, prefix="old"))
    new = numbered(size, prefix="new")
    fault = proxy.inject(FaultKind.DROP_REPLY, match=lost)
    try:
        store.set_messages(KEY, new)
        outcome = "returned"
    except Exception as exc:  # which error: checked below
        outcome = type(exc).__name__
    assert fault.fired == 1, "the meta write was never seen: the pattern no longer matches"
    assert outcome in ("returned", "BackendUnavailableError")
    assert store.get_messages(KEY) == new  # the write landed: it is what the store holds
    assert store.count_messages(KEY) == size
