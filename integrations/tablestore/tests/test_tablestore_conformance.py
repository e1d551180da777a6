"""TablestoreChatStore against the conformance suite, in both layouts, on the emulator."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.tablestore.testing import TablestoreConnection
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.faults import address_of, url_at
from llama_index.storage.chat_store.testing.services import free_port
from llama_index.storage.chat_store.testing.shared_writers import SharedWriterTests


class TestTablestoreNativeConformance(ChatStoreConformance, SharedWriterTests):
    layout = "native"

    @pytest.fixture
    def store_factory_for(
        self, new_store: Callable[..., Any]
    ) -> Callable[..., Callable[[], BaseChatStore]]:
        made: dict[str, functools.partial[TablestoreChatStore]] = {}

        def factory_for(
            name: str, *, address: tuple[str, int] | None = None, **options: Any
        ) -> Callable[[], BaseChatStore]:
            if name not in made:  # a table per name, created once, dropped after the test
                made[name] = new_store(layout=self.layout)
            if address is not None:
                options["endpoint"] = url_at(made[name].keywords["endpoint"], *address)
            return functools.partial(made[name], **options)

        return factory_for

    @pytest.fixture
    def server_address(self, tablestore_connection: TablestoreConnection) -> tuple[str, int]:
        return address_of(tablestore_connection.endpoint, 443)

    @pytest.fixture
    def unreachable_store(self, tablestore_connection: TablestoreConnection) -> BaseChatStore:
        c = tablestore_connection
        return TablestoreChatStore(
            endpoint=f"http://127.0.0.1:{free_port()}", instance_name=c.instance_name,
            access_key_id=c.access_key_id, access_key_secret=c.access_key_secret,
            table_name=f"t_{uuid.uuid4().hex[:16]}", layout=self.layout,
        )  # fmt: skip

    @pytest.fixture
    def secrets(self, tablestore_connection: TablestoreConnection) -> dict[str, str]:
        return {"access_key_secret": tablestore_connection.access_key_secret}

    @pytest.fixture
    def make_corrupt(
        self, store: TablestoreChatStore, raw_client: Any
    ) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            store.add_messages(key, [ChatMessage(content="fine"), ChatMessage(content="ok")])
            _corrupt_position_1(raw_client, store, key)
            return store

        return corrupt


class TestTablestoreLlamaIndexLayoutConformance(TestTablestoreNativeConformance):
    layout = "llama_index"


def _corrupt_position_1(client: Any, store: TablestoreChatStore, key: str) -> None:
    from llama_index.storage.chat_store.tablestore._sdk import ts

    if store.layout == "llama_index":
        text = '[{"role": "user", "blocks": [{"block_type": "text", "text": "fine"}]}, {"role": 7}]'
        row = ts.Row([("session_id", key)], [("history", text)])
        client.put_row(store.table_name, row)
        return
    _, meta, _ = client.get_row(f"{store.table_name}_meta", [("session_id", key)])
    values = {c[0]: c[1] for c in meta.attribute_columns}
    pk = [("session_id", key), ("gen", values["gen"]), ("seq", values["head"] + 1)]
    _, row, _ = client.get_row(store.table_name, pk)
    columns = [(c[0], c[1]) for c in row.attribute_columns if c[0] != "message"]
    client.put_row(
        store.table_name, ts.Row(pk, [("message", '{"role": "user", "blocks": 7}'), *columns])
    )
