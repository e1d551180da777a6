"""Bad input, faults and configuration: each raises the core error that says what happened."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendUnavailableError,
    Capability,
    ChatMessage,
    ConfigurationError,
    CorruptDataError,
    InvalidKeyError,
    PayloadTooLargeError,
)
from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.tablestore._sdk import ts
from llama_index.storage.chat_store.tablestore.testing import TablestoreConnection, start_tablestore


def _texts(messages: Sequence[ChatMessage | None] | None) -> list[str | None]:
    return [m.content if m else None for m in messages or []]


def test_wrong_secret_raises_authentication_error(
    new_store: Callable[..., Any], tablestore_connection: TablestoreConnection
) -> None:
    table = new_store()().table_name
    c = tablestore_connection
    store = TablestoreChatStore(
        endpoint=c.endpoint, instance_name=c.instance_name, access_key_id=c.access_key_id,
        access_key_secret="wrong-secret", table_name=table,
    )  # fmt: skip
    with pytest.raises(AuthenticationError):
        store.get_messages("k")
    with pytest.raises(AuthenticationError):
        asyncio.run(store.aadd_message("k", ChatMessage(content="x")))


def test_stopped_server_raises_then_the_same_store_recovers() -> None:
    emulator = start_tablestore()
    try:
        store = TablestoreChatStore(
            endpoint=emulator.endpoint, instance_name=emulator.instance_name,
            access_key_id=emulator.access_key_id, access_key_secret=emulator.access_key_secret,
            table_name="chats",
        )  # fmt: skip
        store.create_table_if_not_exist()
        store.add_message("k", ChatMessage(content="before"))
        asyncio.run(store.aget_messages("k"))
        emulator.stop()
        with pytest.raises(BackendUnavailableError, match=str(emulator.port)) as info:
            store.add_message("k", ChatMessage(content="lost"))
        assert emulator.access_key_secret not in str(info.value)
        with pytest.raises(BackendUnavailableError):
            asyncio.run(store.aget_messages("k"))
        emulator.start()
        store.add_message("k", ChatMessage(content="after"))
        assert _texts(store.get_messages("k")) == ["before", "after"]
        assert _texts(asyncio.run(store.aget_messages("k"))) == ["before", "after"]
    finally:
        emulator.cleanup()


@pytest.mark.parametrize("layout", ["native", "llama_index"])
def test_value_over_2_mb_is_refused_before_any_call(
    new_store: Callable[..., Any], layout: str
) -> None:
    store = new_store(layout=layout)()
    huge = ChatMessage(content="x" * (2 * 1024 * 1024))
    with pytest.raises(PayloadTooLargeError, match="2097152"):
        store.add_message("k", huge)
    with pytest.raises(PayloadTooLargeError):
        store.set_messages("k", [ChatMessage(content="ok"), huge])
    assert store.get_keys() == []


def test_missing_table_says_how_to_create_it(tablestore_connection: TablestoreConnection) -> None:
    c = tablestore_connection
    store = TablestoreChatStore(
        endpoint=c.endpoint, instance_name=c.instance_name, access_key_id=c.access_key_id,
        access_key_secret=c.access_key_secret, table_name="no_such_table",
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="create_table_if_not_exist"):
        store.get_messages("k")


def test_incomplete_configuration_is_rejected_without_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TABLESTORE_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("TABLESTORE_ACCESS_KEY_SECRET", raising=False)
    with pytest.raises(ConfigurationError, match="access_key_id"):
        TablestoreChatStore(endpoint="https://x.ots.aliyuncs.com", instance_name="x")
    with pytest.raises(ConfigurationError, match="https://"):
        TablestoreChatStore(endpoint="x.ots.aliyuncs.com", instance_name="x",
                            access_key_id="a", access_key_secret="b")  # fmt: skip


def test_unreadable_meta_row_raises_corrupt_data(
    new_store: Callable[..., Any], raw_client: Any
) -> None:
    store = new_store()()
    store.add_message("k", ChatMessage(content="x"))
    row = ts.Row([("session_id", "k")], [("gen", "not a number"), ("head", 0)])
    raw_client.put_row(f"{store.table_name}_meta", row)
    with pytest.raises(CorruptDataError, match="'k'"):
        store.count_messages("k")


def test_rows_left_by_a_dead_writer_are_fenced_off(
    new_store: Callable[..., Any], raw_client: Any
) -> None:
    """A writer that put its row at the tail and died never blocks the conversation."""
    store = new_store()()
    store.add_messages("k", [ChatMessage(content="m0"), ChatMessage(content="m1")])
    _, meta, _ = raw_client.get_row(f"{store.table_name}_meta", [("session_id", "k")])
    values = {c[0]: c[1] for c in meta.attribute_columns}
    pk = [("session_id", "k"), ("gen", values["gen"]), ("seq", values["tail"])]
    orphan = [("message", '{"role":"user","blocks":[]}'), ("w", "dead-writer"), ("c", 99)]
    raw_client.put_row(store.table_name, ts.Row(pk, orphan))
    assert store.count_messages("k") == 2
    store.add_message("k", ChatMessage(content="m2"))
    assert _texts(store.get_messages("k")) == ["m0", "m1", "m2"]


def test_auto_layout_follows_the_primary_key(new_store: Callable[..., Any]) -> None:
    legacy_table = new_store(layout="llama_index")().table_name
    native_table = new_store(layout="native")().table_name
    base = new_store()
    for table, expected in ((legacy_table, "llama_index"), (native_table, "native")):
        store = base(table_name=table)
        store.add_message("k", ChatMessage(content="x"))
        assert store._resolved == expected
        assert _texts(store.get_messages("k")) == ["x"]


def test_front_insert_after_dropping_the_oldest_keeps_order(new_store: Callable[..., Any]) -> None:
    store = new_store()()
    store.add_messages("k", [ChatMessage(content=f"m{i}") for i in range(5)])
    store.add_message("k", ChatMessage(content="first"), idx=0)
    store.delete_oldest_messages("k", 2)
    store.add_message("k", ChatMessage(content="new-first"), idx=0)
    assert _texts(store.get_messages("k")) == ["new-first", "m1", "m2", "m3", "m4"]
    assert _texts(store.get_messages("k", offset=-2)) == ["m3", "m4"]
    assert store.count_messages("k") == 5


def test_from_url_and_injected_client(
    new_store: Callable[..., Any], tablestore_connection: TablestoreConnection, raw_client: Any
) -> None:
    c = tablestore_connection
    table = new_store()().table_name
    host = c.endpoint.split("://", 1)[1]
    url = (
        f"tablestore://{c.instance_name}@{host}/{table}?scheme={c.endpoint.split(':', 1)[0]}"
        f"&access_key_id={c.access_key_id}&access_key_secret={c.access_key_secret}"
    )
    store = TablestoreChatStore.from_url(url)
    store.add_message("k", ChatMessage(content="via url"))
    assert c.access_key_secret not in repr(store)
    injected = TablestoreChatStore(tablestore_client=raw_client, table_name=table)
    assert "tablestore_client" not in injected.to_dict()
    assert _texts(injected.get_messages("k")) == ["via url"]
    assert _texts(asyncio.run(injected.aget_messages("k"))) == ["via url"]
    assert Capability.NATIVE_ASYNC in injected.capabilities
    injected.clear_store()
    assert store.get_keys() == []


def test_import_is_quiet() -> None:
    """Importing the package prints nothing, even with logging configured to show warnings."""
    code = (
        "import logging, warnings; logging.basicConfig(level=logging.WARNING); "
        "warnings.simplefilter('always'); "
        "import llama_index.storage.chat_store.tablestore; "
        "logging.getLogger('tablestore.encoder').warning('later records still pass')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == ""
    assert done.stderr.strip() == "WARNING:tablestore.encoder:later records still pass"


@pytest.mark.parametrize("client", ["own", "own, named logger", "injected"])
def test_no_credential_in_any_log_record(
    new_store: Callable[..., Any],
    tablestore_connection: TablestoreConnection,
    caplog: pytest.LogCaptureFixture,
    client: str,
) -> None:
    """At DEBUG, with an STS token, no log line has the key id, secret, token or a signature.

    If this fails: the SDK's DEBUG trace of request/response headers (``x-ots-ststoken``,
    ``x-ots-accesskeyid``, ``x-ots-signature``, ``authorization``) reaches a handler
    unredacted on that logger.
    """
    c = tablestore_connection
    table = new_store()().table_name
    token = f"sts-{secrets.token_hex(16)}"
    wrong_secret = f"wrong-{secrets.token_hex(8)}"
    connection = {
        "endpoint": c.endpoint, "instance_name": c.instance_name,
        "access_key_id": c.access_key_id, "table_name": table,
    }  # fmt: skip
    if client == "injected":
        sdk_client = ts.OTSClient(
            c.endpoint, c.access_key_id, c.access_key_secret, c.instance_name, sts_token=token
        )
        store = TablestoreChatStore(tablestore_client=sdk_client, table_name=table)
    else:
        options = {"logger_name": "app.tablestore"} if "named" in client else {}
        store = TablestoreChatStore(
            **connection, access_key_secret=c.access_key_secret, sts_token=token, **options
        )
    rejected = TablestoreChatStore(**connection, access_key_secret=wrong_secret, sts_token=token)
    caplog.set_level(logging.DEBUG)
    store.add_messages("k", [ChatMessage(content="a"), ChatMessage(content="b")])
    assert _texts(store.get_messages("k")) == ["a", "b"]
    assert _texts([store.delete_last_message("k")]) == ["b"]
    asyncio.run(store.aadd_message("k", ChatMessage(content="c")))
    assert _texts(asyncio.run(store.aget_messages("k"))) == ["a", "c"]
    with pytest.raises(AuthenticationError):
        rejected.get_messages("k")
    logged = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
    for header in ("x-ots-accesskeyid", "x-ots-ststoken", "x-ots-signature", "authorization"):
        values = re.findall(rf"'{header}': '([^']*)'", logged, re.IGNORECASE)
        assert values, f"the SDK traced no {header} header: the check would see nothing"
        assert set(values) == {"***"}, f"{header} is logged"
    for secret in (token, c.access_key_secret, wrong_secret, c.access_key_id):
        assert secret not in logged


@pytest.mark.parametrize("layout", ["native", "llama_index"])
def test_a_key_with_a_lone_surrogate_is_an_invalid_key(
    new_store: Callable[..., Any], layout: str
) -> None:
    """Every method rejects ``"k\\ud800"`` with InvalidKeyError before any call, sync and async.

    If this fails: the key reached the SDK, which raises a raw UnicodeEncodeError.
    """
    store = new_store(layout=layout)()
    key = "k\ud800"
    message = ChatMessage(content="x")
    calls: list[Callable[[], object]] = [
        lambda: store.get_messages(key), lambda: store.count_messages(key),
        lambda: store.add_message(key, message), lambda: store.add_messages(key, [message]),
        lambda: store.set_messages(key, [message]), lambda: store.delete_messages(key),
        lambda: store.delete_message(key, 0), lambda: store.delete_last_message(key),
        lambda: store.delete_oldest_messages(key, 1),
        lambda: asyncio.run(store.aadd_message(key, message)),
        lambda: asyncio.run(store.aget_messages(key)),
        lambda: asyncio.run(store.adelete_messages(key)),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(InvalidKeyError, match="surrogate"):
            call()
    assert store.get_keys() == []
