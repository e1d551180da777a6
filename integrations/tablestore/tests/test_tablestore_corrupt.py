"""Damaged data in both layouts: reads name the key and position, removal always works.

``delete_messages`` removes a damaged conversation and returns the messages it can read,
leaving out the unreadable ones (reported in one WARNING naming key and positions);
``set_messages(key, [])`` and ``clear()`` remove it too. Removals that hand back a specific
message (``delete_last_message``, ``delete_message``, ``delete_oldest_messages``) raise
``CorruptDataError`` when that message is unreadable, and remove nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from llama_index.storage.chat_store.core import ChatMessage, CorruptDataError, message_to_json
from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.tablestore._sdk import ts
from llama_index.storage.chat_store.testing.samples import numbered

_LOGGER = "llama_index.storage.chat_store.tablestore"
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


def _corrupt_position_1(client: Any, store: TablestoreChatStore, key: str) -> None:
    """[m0, <not a message>, m2] in the store's layout."""
    store.add_messages(key, numbered(3))
    if store.layout == "native":
        _put_message(client, store, key, 1, _NOT_A_MESSAGE)
    else:
        good = [message_to_json(m) for m in store.get_messages(key)]
        _put_history(client, store, key, f"[{good[0]}, {_NOT_A_MESSAGE}, {good[2]}]")


@pytest.fixture(params=["native", "llama_index"])
def store(request: pytest.FixtureRequest, new_store: Callable[..., Any]) -> TablestoreChatStore:
    return new_store(layout=request.param)()  # type: ignore[no-any-return]


@pytest.fixture
def native_store(new_store: Callable[..., Any]) -> TablestoreChatStore:
    return new_store(layout="native")()  # type: ignore[no-any-return]


def test_delete_messages_removes_a_conversation_holding_a_corrupt_message(
    store: TablestoreChatStore, raw_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """delete_messages removes it, returns the readable messages and reports position 1.

    If this fails: delete_messages parses every message before removing and raises on the
    unreadable one, so the conversation can never be deleted (or it silently drops it).
    """
    _corrupt_position_1(raw_client, store, "k")
    with pytest.raises(CorruptDataError) as info:
        store.get_messages("k")
    assert (info.value.key, info.value.position) == ("k", 1)
    with caplog.at_level(logging.WARNING, logger=_LOGGER):
        assert _texts(store.delete_messages("k")) == ["m0", "m2"]
    [report] = [r for r in caplog.records if r.name == _LOGGER]
    assert "'k'" in report.getMessage()
    assert "[1]" in report.getMessage()
    assert store.get_messages("k") == []
    assert store.count_messages("k") == 0
    assert store.get_keys() == []


@pytest.mark.parametrize("how", ["set_messages([])", "set_messages([x])", "clear", "async"])
def test_a_corrupt_conversation_can_be_replaced_or_cleared(
    store: TablestoreChatStore, raw_client: Any, how: str
) -> None:
    """set_messages (to [] or to new messages), clear and adelete_messages all work on it.

    If this fails: that operation reads (and parses) the old conversation first.
    """
    _corrupt_position_1(raw_client, store, "k")
    if how == "set_messages([])":
        store.set_messages("k", [])
    elif how == "set_messages([x])":
        store.set_messages("k", [ChatMessage(content="x")])
    elif how == "clear":
        store.clear()
    else:
        assert _texts(asyncio.run(store.adelete_messages("k"))) == ["m0", "m2"]
    expected = ["x"] if how == "set_messages([x])" else []
    assert _texts(store.get_messages("k")) == expected
    assert store.count_messages("k") == len(expected)


def test_removing_a_corrupt_message_by_position_raises_and_keeps_it(
    store: TablestoreChatStore, raw_client: Any
) -> None:
    """Removals that return the corrupt message raise CorruptDataError (key, position).

    If this fails: a removal returned something else than the message it removed, or
    removed data it could not hand back.
    """
    _corrupt_position_1(raw_client, store, "k")
    with pytest.raises(CorruptDataError) as info:
        store.delete_message("k", 1)
    assert (info.value.key, info.value.position) == ("k", 1)
    with pytest.raises(CorruptDataError):
        store.delete_oldest_messages("k", 2)
    assert store.count_messages("k") == 3
    assert _texts(store.delete_messages("k")) == ["m0", "m2"]


def test_readable_ends_of_a_corrupt_conversation_can_be_removed(
    native_store: TablestoreChatStore, raw_client: Any
) -> None:
    """Native layout: messages around a corrupt one still pop; popping onto it raises.

    If this fails: one corrupt message blocks every removal, or a pop skipped over it.
    """
    store = native_store
    _corrupt_position_1(raw_client, store, "k")
    assert _texts([store.delete_message("k", 2)]) == ["m2"]
    with pytest.raises(CorruptDataError) as info:
        store.delete_last_message("k")
    assert (info.value.key, info.value.position) == ("k", 1)
    assert _texts(store.delete_oldest_messages("k", 1)) == ["m0"]
    assert store.count_messages("k") == 1


def test_a_history_that_is_not_json_is_deleted(
    new_store: Callable[..., Any], raw_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """LlamaIndex's layout: a history that is not a JSON array reads as corrupt, deletes as [].

    If this fails: delete_messages parses the history before deleting the row.
    """
    store = new_store(layout="llama_index")()
    _put_history(raw_client, store, "k", "not json [")
    with pytest.raises(CorruptDataError, match="'k'"):
        store.count_messages("k")
    with caplog.at_level(logging.WARNING, logger=_LOGGER):
        assert store.delete_messages("k") == []
    assert any("'k'" in r.getMessage() for r in caplog.records if r.name == _LOGGER)
    assert store.get_keys() == []


@pytest.mark.parametrize("value", [bytearray(b"\xff\x00"), 42])
def test_a_message_cell_that_is_not_text_is_deleted(
    native_store: TablestoreChatStore, raw_client: Any, value: Any
) -> None:
    """A message row whose cell is binary or a number: reads raise, delete_messages works.

    If this fails: delete_messages requires every message cell to be text.
    """
    native_store.add_messages("k", numbered(2))
    _put_message(raw_client, native_store, "k", 0, value)
    with pytest.raises(CorruptDataError) as info:
        native_store.get_messages("k")
    assert (info.value.key, info.value.position) == ("k", 0)
    assert _texts(native_store.delete_messages("k")) == ["m1"]
    assert native_store.get_messages("k") == []


def test_a_missing_message_row_is_corrupt_data_not_contention(
    native_store: TablestoreChatStore, raw_client: Any
) -> None:
    """A row the meta row names is gone: reads and pops raise CorruptDataError at once.

    If this fails: the store took the gap for a concurrent change and retried until it gave
    up with a generic contention error, or delete_messages could not remove it.
    """
    native_store.add_messages("k", numbered(4))
    raw_client.delete_row(
        native_store.table_name, ts.Row(_message_pk(raw_client, native_store, "k", 3))
    )
    raw_client.delete_row(
        native_store.table_name, ts.Row(_message_pk(raw_client, native_store, "k", 1))
    )
    with pytest.raises(CorruptDataError) as info:
        native_store.get_messages("k")
    assert (info.value.key, info.value.position) == ("k", 1)
    assert _texts(native_store.get_messages("k", limit=1)) == ["m0"]
    with pytest.raises(CorruptDataError) as info:
        native_store.delete_last_message("k")
    assert (info.value.key, info.value.position) == ("k", 3)
    with pytest.raises(CorruptDataError) as info:
        TablestoreChatStore(**_same(native_store)).delete_last_message("k")  # no memory
    assert (info.value.key, info.value.position) == ("k", 3)
    assert _texts(native_store.delete_messages("k")) == ["m0", "m2"]
    assert native_store.count_messages("k") == 0


@pytest.mark.parametrize("meta", [{"head": 5, "tail": 2}, {"head": "zero", "tail": 2}])
def test_a_damaged_meta_row_is_corrupt_data_and_removable(
    native_store: TablestoreChatStore, raw_client: Any, meta: dict[str, Any]
) -> None:
    """A meta row with tail < head (or a non-number) raises CorruptDataError naming the key.

    If this fails: count_messages returned tail - head (negative) and reads came back
    empty, or the damaged row blocked delete_messages and set_messages.
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
    with pytest.raises(CorruptDataError, match="'k'"):
        store.add_message("k", ChatMessage(content="more"))
    assert store.delete_messages("k") == []
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
