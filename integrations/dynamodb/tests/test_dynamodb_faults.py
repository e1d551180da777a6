"""Faults against real servers: throttling through a proxy, a moto server killed and restarted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.core import BackendUnavailableError, ChatMessage
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore
from llama_index.storage.chat_store.testing.services import (
    DynamoDBFaultProxy,
    LocalServer,
    start_moto,
)


@pytest.fixture
def proxy(moto: Any) -> Iterator[DynamoDBFaultProxy]:
    with DynamoDBFaultProxy(moto.url) as proxy:
        yield proxy


def test_throttling_is_retried_with_backoff(moto: Any, proxy: DynamoDBFaultProxy) -> None:
    store = moto.store("native", endpoint_url=proxy.url, max_retries=5)
    proxy.throttle = 3
    store.add_message("k", ChatMessage(content="x"))
    assert proxy.throttle == 0  # three refusals were retried by botocore, then it went through
    assert store.count_messages("k") == 1


def test_lasting_throttling_becomes_backend_unavailable(
    moto: Any, proxy: DynamoDBFaultProxy
) -> None:
    store = moto.store("native", endpoint_url=proxy.url, max_retries=2)
    store.add_message("k", ChatMessage(content="x"))
    proxy.throttle = -1
    with pytest.raises(BackendUnavailableError, match="ProvisionedThroughputExceeded") as info:
        store.get_messages("k")
    assert info.value.__cause__ is not None
    with pytest.raises(BackendUnavailableError):
        asyncio.run(store.aadd_message("k", ChatMessage(content="y")))
    proxy.throttle = 0
    assert store.count_messages("k") == 1


@pytest.fixture
def own_server() -> Iterator[LocalServer]:
    server = start_moto()
    yield server
    server.cleanup()


def test_server_down_then_back(own_server: LocalServer, moto: Any) -> None:
    url = f"http://127.0.0.1:{own_server.port}"
    store = DynamoDBChatStore(
        table_name="chat", endpoint_url=url, max_retries=1, timeout=2, **moto.credentials
    )
    store.create_table()
    store.add_message("k", ChatMessage(content="before"))
    own_server.stop()
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{own_server.port}"):
        store.get_messages("k")
    with pytest.raises(BackendUnavailableError):
        store.add_message("k", ChatMessage(content="lost"))
    own_server.start()  # moto keeps nothing across a restart: the table comes back empty
    store.create_table()
    store.add_message("k", ChatMessage(content="after"))
    assert [m.content for m in store.get_messages("k")] == ["after"]
