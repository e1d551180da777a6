"""Damaged data in both layouts: reads name the key and position, removal always works.

The project's rule: a removal (``delete_messages``, ``delete_last_message``,
``delete_message``, ``delete_oldest_messages``) does what it was asked, atomically; when a
message it removed cannot be read, it then raises ``CorruptDataError`` naming the key and the
first unreadable position, saying the data was removed and holding it in ``data``.
``set_messages(key, [])`` and ``clear()`` remove a damaged conversation silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from llama_index.storage.chat_store.core import (
    ChatMessage,
    CorruptDataError,
    SerializationError,
    message_to_json,
)
from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.tablestore._sdk import ts
from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED, numbered

_NOT_A_MESSAGE = '{"role": "user", "blocks": 7}'


def _texts(messages: Sequence[ChatMessage | None] | None) -> list[str | None] | None:
    return None if messages is None else [m.content if m else None for m in messages]


def _meta_values(client: Any, store: TablestoreChatStore, key: str) -> dict[str, Any]:
    _, row, _ = client.get_row(f"{store.table_name}_meta", [("session_id", key)])
    return {c[0]: c[1] for c in row.attribute_columns}


def _message_pk(client: Any, store: TablestoreChatStore, key: str, position: int) -> Any:
    meta = _meta_values(client, store, key)
    return [("session_id", key), ("gen", meta["gen"]), ("seq", meta["head"] + position)]


def _put_message(
    client: Any, store: TablestoreChatStore, key: str, position: int, value: Any
) -> None:
    """Overwrite the message text at ``position`` (native layout), keeping the other columns."""
    pk = _message_pk(client, store, key, position)
    _, row, _ = client.get_row(store.table_name, pk)
    others = [(c[0], c[1]) for c in row.attribute_columns if c[0] != "message"]
    client.put_row(store.table_name, ts.Row(pk, [("message", value), *others]))


def _put_history(client: Any, store: TablestoreChatStore, key: str, text: str) -> None:
    """Write LlamaIndex's row for ``key`` holding ``text``."""
    client.put_row(store.table_name, ts.Row([("session_id", key)], [("history", text)]))


def _corrupt_position_1(client: Any, store: TablestoreChatStore, key: str, n: int = 3) -> None:
    """[m0, <not a message>, m2, ...] (``n`` messages) in the store's layout."""
    _put_at_1(client, store, key, n, _NOT_A_MESSAGE)


def _put_at_1(client: Any, store: TablestoreChatStore, key: str, n: int, text: str) -> None:
    """[m0, <text>, m2, ...] (``n`` messages) in the store's layout."""
    store.add_messages(key, numbered(n))
    if store.layout == "native":
        _put_message(client, store, key, 1, text)
    else:
        good = [message_to_json(m) for m in store.get_messages(key)]
        _put_history(client, store, key, "[" + ", ".join([good[0], text, *good[2:]]) + "]")


def _removed_at(
    info: pytest.ExceptionInfo[CorruptDataError], key: str, position: int | None
) -> Any:
    """Check the error a removal raised after removing unreadable data; return its data."""
    assert (info.value.key, info.value.position) == (key, position)
    assert "removed" in str(info.value)
    return info.value.data


@pytest.fixture(params=["native", "llama_index"])
def store(request: pytest.FixtureRequest, new_store: Callable[..., Any]) -> TablestoreChatStore:
    return new_store(layout=request.param)()  # type: ignore[no-any-return]


@pytest.fixture
def native_store(new_store: Callable[..., Any]) -> TablestoreChatStore:
    return new_store(layout="native")()  # type: ignore[no-any-return]


@pytest.mark.parametrize("call", ["sync", "async"])
def test_delete_messages_removes_a_corrupt_conversation_then_raises_with_its_data(
    store: TablestoreChatStore, raw_client: Any, caplog: pytest.LogCaptureFixture, call: str
) -> None:
    """delete_messages removes it, then raises CorruptDataError (key, position 1, the data).

    If this fails: delete_messages parses every message before removing and raises on the
    unreadable one (the conversation can never be deleted), or it returns the readable
    messages and only logs the rest (data lost without the caller knowing).
    """
    _corrupt_position_1(raw_client, store, "k")
    with pytest.raises(CorruptDataError) as info:
        store.get_messages("k")
    assert (info.value.key, info.value.position) == ("k", 1)
    delete: Callable[[], Any] = (
        (lambda: store.delete_messages("k"))
        if call == "sync"
        else (lambda: asyncio.run(store.adelete_messages("k")))
    )
    with pytest.raises(CorruptDataError) as info:
        delete()
    assert _removed_at(info, "k", 1) == _NOT_A_MESSAGE
    assert not [r for r in caplog.records if r.levelno >= 30]
    assert store.get_messages("k") == []
    assert store.count_messages("k") == 0
    assert store.get_keys() == []


@pytest.mark.parametrize("how", ["set_messages([])", "set_messages([x])", "clear"])
def test_a_corrupt_conversation_can_be_replaced_or_cleared_silently(
    store: TablestoreChatStore, raw_client: Any, how: str
) -> None:
    """set_messages (to [] or to new messages) and clear work on it without raising.

    If this fails: that operation reads (and parses) the old conversation first.
    """
    _corrupt_position_1(raw_client, store, "k")
    if how == "set_messages([])":
        store.set_messages("k", [])
    elif how == "set_messages([x])":
        store.set_messages("k", [ChatMessage(content="x")])
    else:
        store.clear()
    expected = ["x"] if how == "set_messages([x])" else []
    assert _texts(store.get_messages("k")) == expected
    assert store.count_messages("k") == len(expected)


@pytest.mark.parametrize("removal", ["delete_message", "delete_oldest", "delete_last"])
def test_removing_a_corrupt_message_removes_it_then_raises(
    store: TablestoreChatStore, raw_client: Any, removal: str
) -> None:
    """Each removal that reaches the corrupt message removes what it was asked, then raises.

    If this fails: a removal raised and removed nothing (corrupt data could never be
    removed that way), skipped the message, or removed more or less than asked.
    """
    _corrupt_position_1(raw_client, store, "k", n=4)
    if removal == "delete_last":
        assert _texts([store.delete_message("k", 3), store.delete_message("k", 2)]) == ["m3", "m2"]
    remove: dict[str, Callable[[], Any]] = {
        "delete_message": lambda: store.delete_message("k", 1),
        "delete_oldest": lambda: store.delete_oldest_messages("k", 3),
        "delete_last": lambda: store.delete_last_message("k"),
    }
    with pytest.raises(CorruptDataError) as info:
        remove[removal]()
    assert _removed_at(info, "k", 1) == _NOT_A_MESSAGE
    left = {"delete_message": ["m0", "m2", "m3"], "delete_oldest": ["m3"], "delete_last": ["m0"]}
    assert _texts(store.get_messages("k")) == left[removal]


def test_removing_a_readable_message_keeps_a_corrupt_neighbour(
    store: TablestoreChatStore, raw_client: Any
) -> None:
    """delete_message in the middle returns the message and keeps the corrupt one as stored.

    If this fails: the removal parsed the whole conversation and refused (or dropped or
    rewrote the corrupt message).
    """
    _corrupt_position_1(raw_client, store, "k", n=4)
    assert _texts([store.delete_message("k", 2)]) == ["m2"]
    assert store.count_messages("k") == 3
    with pytest.raises(CorruptDataError) as info:
        store.get_messages("k")
    assert (info.value.key, info.value.position) == ("k", 1)
    if store.layout == "native":  # LlamaIndex's layout parses the whole value for any window
        assert _texts(store.get_messages("k", limit=1)) == ["m0"]
        assert _texts(store.get_messages("k", offset=2)) == ["m3"]
    with pytest.raises(CorruptDataError) as info:
        store.delete_messages("k")
    assert _removed_at(info, "k", 1) == _NOT_A_MESSAGE


def test_a_message_this_mode_cannot_hold_is_never_removed_unreturned(
    store: TablestoreChatStore, raw_client: Any
) -> None:
    """A valid message LlamaIndex cannot hold: removing it raises SerializationError, keeps it.

    Without llama-index-core the message reads, so the removal returns it.

    If this fails: the removal deleted valid data it could not return (SerializationError
    says the data is intact), or core's own model refused a message it can hold.
    """
    unknown = '{"role": "wizard", "blocks": [{"block_type": "text", "text": "hi"}]}'
    _put_at_1(raw_client, store, "k", 2, unknown)
    if LLAMA_INDEX_INSTALLED:
        with pytest.raises(SerializationError, match="'k'"):
            store.delete_last_message("k")
        with pytest.raises(SerializationError, match="'k'"):
            store.delete_messages("k")
        assert store.count_messages("k") == 2
    else:
        assert [m.role for m in store.delete_messages("k") or []] == ["user", "wizard"]
        assert store.count_messages("k") == 0


def test_a_history_that_is_not_json_is_deleted_then_raised(
    new_store: Callable[..., Any], raw_client: Any
) -> None:
    """LlamaIndex's layout: a history that is not a JSON array: delete removes it, then raises.

    Removals by position cannot resolve a position in it: they raise and remove nothing.

    If this fails: delete_messages parses the history before deleting the row, or returns
    ``[]`` as if the conversation had been empty.
    """
    store = new_store(layout="llama_index")()
    _put_history(raw_client, store, "k", "not json [")
    with pytest.raises(CorruptDataError, match="'k'"):
        store.count_messages("k")
    with pytest.raises(CorruptDataError, match="'k'") as info:
        store.delete_last_message("k")
    assert "removed" not in str(info.value)
    with pytest.raises(CorruptDataError) as info:
        store.delete_messages("k")
    assert _removed_at(info, "k", None) == "not json ["
    assert store.get_keys() == []
    assert store.get_messages("k") == []


@pytest.mark.parametrize(("value", "data"), [(bytearray(b"\xff\x00"), b"\xff\x00"), (42, "42")])
def test_a_message_cell_that_is_not_text_is_deleted_then_raised(
    native_store: TablestoreChatStore, raw_client: Any, value: Any, data: Any
) -> None:
    """A message row whose cell is binary or a number: reads raise, removals remove it.

    If this fails: a removal requires every message cell to be text, or loses the value.
    """
    native_store.add_messages("k", numbered(3))
    _put_message(raw_client, native_store, "k", 0, value)
    with pytest.raises(CorruptDataError) as info:
        native_store.get_messages("k")
    assert (info.value.key, info.value.position) == ("k", 0)
    with pytest.raises(CorruptDataError) as info:
        native_store.delete_message("k", 1)  # the rewrite cannot keep position 0
    assert (info.value.position, native_store.count_messages("k")) == (0, 3)
    assert "removed" not in str(info.value)
    with pytest.raises(CorruptDataError) as info:
        native_store.delete_oldest_messages("k", 1)
    assert _removed_at(info, "k", 0) == data
    assert _texts(native_store.get_messages("k")) == ["m1", "m2"]
    _put_message(raw_client, native_store, "k", 1, value)
    with pytest.raises(CorruptDataError) as info:
        native_store.delete_messages("k")
    assert _removed_at(info, "k", 1) == data
    assert native_store.get_messages("k") == []


def test_a_missing_message_row_is_corrupt_data_not_contention(
    native_store: TablestoreChatStore, raw_client: Any
) -> None:
    """A row the meta row names is gone: reads raise at once; removals remove it, then raise.

    Pops are checked both with the meta row remembered (read in one batch with the row) and
    without.

    If this fails: the store took the gap for a concurrent change and retried until it gave
    up with a generic contention error, a removal could not remove it, or it removed it
    without saying so.
    """
    native_store.add_messages("k", numbered(6))
    for position in (5, 4, 1):
        pk = _message_pk(raw_client, native_store, "k", position)
        raw_client.delete_row(native_store.table_name, ts.Row(pk))
    with pytest.raises(CorruptDataError) as info:
        native_store.get_messages("k")
    assert (info.value.key, info.value.position) == ("k", 1)
    assert _texts(native_store.get_messages("k", limit=1)) == ["m0"]
    with pytest.raises(CorruptDataError) as info:
        native_store.delete_message("k", 2)  # the rewrite cannot keep position 1
    assert (info.value.position, native_store.count_messages("k")) == (1, 6)
    with pytest.raises(CorruptDataError) as info:
        native_store.delete_last_message("k")  # remembered meta row
    assert _removed_at(info, "k", 5) is None
    with pytest.raises(CorruptDataError) as info:
        TablestoreChatStore(**_same(native_store)).delete_last_message("k")  # no memory
    assert _removed_at(info, "k", 4) is None
    assert native_store.count_messages("k") == 4
    with pytest.raises(CorruptDataError) as info:
        native_store.delete_message("k", 1)
    assert _removed_at(info, "k", 1) is None
    assert _texts(native_store.get_messages("k")) == ["m0", "m2", "m3"]
    raw_client.delete_row(
        native_store.table_name, ts.Row(_message_pk(raw_client, native_store, "k", 1))
    )
    with pytest.raises(CorruptDataError) as info:
        native_store.delete_messages("k")
    assert _removed_at(info, "k", 1) is None
    assert native_store.count_messages("k") == 0


@pytest.mark.parametrize("meta", [{"head": 5, "tail": 2}, {"head": "zero", "tail": 2}])
def test_a_damaged_meta_row_is_corrupt_data_and_removable(
    native_store: TablestoreChatStore, raw_client: Any, meta: dict[str, Any]
) -> None:
    """A meta row with tail < head (or a non-number) raises CorruptDataError naming the key.

    delete_messages removes it (and its rows), then raises; set_messages replaces it.

    If this fails: count_messages returned tail - head (negative) and reads came back
    empty, or the damaged row blocked delete_messages and set_messages, or delete_messages
    removed it without saying so.
    """
    store = native_store
    for key in ("k", "k2", "k3"):
        store.add_messages(key, numbered(3))
        values = {**_meta_values(raw_client, store, key), **meta}
        raw_client.put_row(
            f"{store.table_name}_meta", ts.Row([("session_id", key)], list(values.items()))
        )
    for read in (store.count_messages, store.get_messages, store.delete_last_message):
        with pytest.raises(CorruptDataError, match="'k'") as info:
            read("k")
        assert info.value.key == "k"
        assert "removed" not in str(info.value)
    with pytest.raises(CorruptDataError, match="'k'"):
        store.add_message("k", ChatMessage(content="more"))
    with pytest.raises(CorruptDataError) as info:
        store.delete_messages("k")
    _removed_at(info, "k", None)
    assert store.count_messages("k") == 0
    store.add_message("k", ChatMessage(content="again"))
    assert _texts(store.get_messages("k")) == ["again"]
    store.set_messages("k2", [ChatMessage(content="new")])
    assert _texts(store.get_messages("k2")) == ["new"]
    store.set_messages("k3", [])
    assert sorted(store.get_keys()) == ["k", "k2"]


def _same(store: TablestoreChatStore) -> dict[str, Any]:
    secret = store.access_key_secret
    return {
        "endpoint": store.endpoint, "instance_name": store.instance_name,
        "access_key_id": store.access_key_id, "table_name": store.table_name,
        "access_key_secret": secret.get_secret_value() if secret else None,
        "layout": store.layout,
    }  # fmt: skip
