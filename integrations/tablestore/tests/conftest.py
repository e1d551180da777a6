"""Fixtures: fresh tables on this session's Tablestore (the emulator unless configured)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.tablestore._sdk import ts
from llama_index.storage.chat_store.tablestore.testing import TablestoreConnection

StoreFactory = Callable[..., TablestoreChatStore]


@pytest.fixture
def raw_client(tablestore_connection: TablestoreConnection) -> Any:
    """A plain OTSClient on the session's instance, for writing data behind the store's back."""
    c = tablestore_connection
    return ts.OTSClient(c.endpoint, c.access_key_id, c.access_key_secret, c.instance_name)


@pytest.fixture
def new_store(
    tablestore_connection: TablestoreConnection, raw_client: Any
) -> Iterator[StoreFactory]:
    """``new_store(layout=...)``: a factory over a new table (created), dropped after the test."""
    created: list[str] = []

    def make(**options: Any) -> functools.partial[TablestoreChatStore]:
        table = f"t_{uuid.uuid4().hex[:16]}"
        c = tablestore_connection
        factory = functools.partial(
            TablestoreChatStore, endpoint=c.endpoint, instance_name=c.instance_name,
            access_key_id=c.access_key_id, access_key_secret=c.access_key_secret,
            table_name=table, **options,
        )  # fmt: skip
        with factory() as store:
            store.create_table_if_not_exist()
        created.extend([table, f"{table}_meta"])
        return factory

    yield make
    existing = set(raw_client.list_table())
    for table in created:
        if table in existing:
            raw_client.delete_table(table)
