"""A connection the network cuts is discarded quietly, and the call still tells the truth."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import urlsplit

import pytest

from llama_index.storage.chat_store.alloydb import AlloyDBChatStore, AlloyDBEngine
from llama_index.storage.chat_store.core import BackendUnavailableError, ChatMessage
from llama_index.storage.chat_store.postgres.testing import LocalAsyncConnector, LocalConnector
from llama_index.storage.chat_store.testing.faults import FaultProxy


def _store(proxy: FaultProxy, postgres_url: str, **options: object) -> AlloyDBChatStore:
    database = urlsplit(postgres_url).path.lstrip("/")
    engine = AlloyDBEngine.from_instance(
        "p", "r", "c", "i", database, user="test", password="pw",
        connector=LocalConnector(proxy.host, proxy.port),
        async_connector=LocalAsyncConnector(proxy.host, proxy.port),
    )  # fmt: skip
    return AlloyDBChatStore.from_engine(engine, table_name=f"f_{uuid.uuid4().hex[:8]}", **options)


def _server(postgres_url: str) -> tuple[str, int]:
    parts = urlsplit(postgres_url)
    return str(parts.hostname), int(parts.port or 5432)


def test_cut_connection_is_dropped_without_an_error_log(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A pg8000 connection cut by the network is discarded with no ERROR log; the retry works.

    If this fails: the store hands the dead connection to SQLAlchemy's pool to close, and
    pg8000's close (it writes a Terminate message first) fails on the cut socket, which the
    pool logs as ERROR "Exception terminating connection" with a traceback.
    """
    with FaultProxy(*_server(postgres_url)) as proxy, _store(proxy, postgres_url) as store:
        store.add_message("k", ChatMessage(content="before"))
        proxy.drop_connections()
        with caplog.at_level(logging.DEBUG):
            store.add_message("k", ChatMessage(content="after"))
        assert [m.content for m in store.get_messages("k")] == ["before", "after"]
        store.clear()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]


def test_cut_connection_without_retries_still_raises(postgres_url: str) -> None:
    """With retries off, the cut surfaces as BackendUnavailableError: nothing is hidden.

    If this fails: discarding the dead connection swallowed the failure of the call.
    """
    proxy = FaultProxy(*_server(postgres_url))
    with proxy, _store(proxy, postgres_url, retries=0) as store:
        store.add_message("k", ChatMessage(content="before"))
        proxy.drop_connections()
        with pytest.raises(BackendUnavailableError):
            store.add_message("k", ChatMessage(content="after"))
        assert [m.content for m in store.get_messages("k")] == ["before"]
        store.clear()
