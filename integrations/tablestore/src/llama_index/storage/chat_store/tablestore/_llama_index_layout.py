"""LlamaIndex's layout: one row per conversation, its messages as a JSON array string.

Table ``llama_index_chat_store_v1`` (by default), primary key ``session_id STRING``, column
``history``. LlamaIndex rewrites the row on every change with no condition, so concurrent
writers lose messages. Here every change is a read-modify-write made conditional on the
``history`` value read (``EXPECT_NOT_EXIST`` for a new row), retried on conflict: atomic, also
against LlamaIndex's own writers. The whole conversation must fit the 2 MB value limit;
larger writes raise :class:`PayloadTooLargeError` before any call.

Every change is applied once, however often it is resent (see :mod:`._record`): the write
also bumps the row's ``opn`` counter and records the change's operation id (and what a
removal removed) in a record column, and its condition covers the counter too. An
emptied conversation keeps its row without ``history`` (LlamaIndex reads it as empty, and
lists its key) so that its record outlives it. LlamaIndex's own writers replace the whole
row, record included: a change of ours resent across one of theirs may apply twice.

Replacing or removing a conversation never needs to parse the old value, so damaged data
never blocks either: a removal that removed something it could not read raises
:class:`CorruptDataError` after the write, holding what was stored (core's
:func:`removal_error`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.storage.chat_store.core import (
    ChatMessage,
    CorruptDataError,
    PayloadTooLargeError,
    SerializationError,
    message_from_json,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import (
    Change,
    ConflictError,
    Plan,
    corrupt_data_remedy,
)
from llama_index.storage.chat_store.core.tools import is_tool_result_json
from llama_index.storage.chat_store.tablestore import _record as record
from llama_index.storage.chat_store.tablestore._sdk import Call, cells, get_row, key_page, ts

__all__ = [
    "PRIMARY_KEY", "add", "clear", "count", "keys_page", "read", "remove", "replace", "take",
]  # fmt: skip

PRIMARY_KEY = [("session_id", "STRING")]
MAX_VALUE_BYTES = 2 * 1024 * 1024
_PAGE_ROWS = 1000

_COUNTER = "opn"
"""How many of our changes the row has seen: the next one records in slot ``opn + 1``."""
_NEVER = "\x00never written"
"""A ``history`` no writer stores: a condition ``history == _NEVER`` passing if missing
holds exactly when there is no history (no column condition tests absence directly)."""


@dataclass(frozen=True)
class _Row:
    """A conversation's row as read: ``history`` as stored (``None``: none), the counter."""

    exists: bool
    history: Any = None
    changes: int | None = None


def _read_row(table: str, key: str) -> Plan[_Row]:
    _, row, _ = yield get_row(table, key, ["history", _COUNTER])
    if row is None:
        return _Row(False)
    columns = cells(row)
    changes = columns.get(_COUNTER)
    if not isinstance(changes, int) or isinstance(changes, bool):
        changes = None
    return _Row(True, columns.get("history"), changes)


def _items(key: str, history: Any) -> list[Any]:
    """The JSON array ``history`` holds, or :class:`CorruptDataError` naming the key."""
    if isinstance(history, (bytes, bytearray)):
        data: str | bytes = bytes(history)
    else:
        data = history if isinstance(history, str) else repr(history)
    remedy = f" ({corrupt_data_remedy(key)})"
    if not isinstance(history, str):
        raise CorruptDataError(
            f"conversation {key!r}: history is not text{remedy}", key=key, data=data
        )
    try:
        items = json.loads(history)
    except ValueError as exc:
        raise CorruptDataError(
            f"conversation {key!r}: history is not JSON ({exc}){remedy}", key=key, data=data
        ) from exc
    if not isinstance(items, list):
        raise CorruptDataError(
            f"conversation {key!r}: history is not a JSON array{remedy}", key=key, data=data
        )
    return items


def _item_json(item: Any) -> str:
    return json.dumps(item, ensure_ascii=False)


def stored_result(item: Any) -> bool:
    """Whether a stored message (an item of the JSON array) is a tool result."""
    return is_tool_result_json(_item_json(item))


def _parse(key: str, history: Any) -> list[ChatMessage]:
    if history is None:
        return []
    return [
        message_from_json(_item_json(item), key=key, position=i)
        for i, item in enumerate(_items(key, history))
    ]


def _unchanged(row: _Row) -> Any:
    """The condition that the row is still as read: its history and its counter."""
    if not row.exists:
        return ts.Condition(ts.RowExistenceExpectation.EXPECT_NOT_EXIST)
    both = ts.CompositeColumnCondition(ts.LogicalOperator.AND)
    # A missing column reads as None: equal to a value never written, passing if missing.
    both.add_sub_condition(ts.SingleColumnCondition(
        "history", _NEVER if row.history is None else row.history, ts.ComparatorType.EQUAL,
        pass_if_missing=row.history is None,
    ))  # fmt: skip
    both.add_sub_condition(ts.SingleColumnCondition(
        _COUNTER, -1 if row.changes is None else row.changes, ts.ComparatorType.EQUAL,
        pass_if_missing=row.changes is None,
    ))  # fmt: skip
    return ts.Condition(ts.RowExistenceExpectation.EXPECT_EXIST, both)


def _write(
    table: str,
    key: str,
    row: _Row,
    new: str | None,
    change: Change,
    removed: Sequence[Any] | None = None,
) -> Plan[None]:
    """Write ``new`` (``None``: no history) if the row is still ``row``, recording ``change``.

    An emptied conversation keeps its row, without ``history`` (LlamaIndex reads it as
    empty), for its record of changes.

    Raises:
        ConflictError: The row changed since it was read (``change`` checks its record next).
    """
    pk = [("session_id", key)]
    changes = (row.changes or 0) + 1
    values: list[tuple[str, Any]] = [("history", new)] if new is not None else []
    values += [(_COUNTER, changes), (record.column(changes), record.entry(change.id, removed))]
    try:
        if not row.exists:  # a new row has a history: changes that leave none skip it
            yield Call("put_row", (table, ts.Row(pk, values), _unchanged(row)))
        else:
            update = {"put": values, "delete_all": ["history"]} if new is None else {"put": values}
            yield Call("update_row", (table, ts.Row(pk, update), _unchanged(row)))
    except ConflictError:
        change.check = True
        raise


def read(table: str, key: str) -> Plan[list[ChatMessage]]:
    """Return the conversation's messages (``[]`` when the row is missing)."""
    return _parse(key, (yield from _read_row(table, key)).history)


def count(table: str, key: str) -> Plan[int]:
    """Return the number of messages (the array's length; no message is parsed)."""
    history = (yield from _read_row(table, key)).history
    return 0 if history is None else len(_items(key, history))


def _encode(key: str, jsons: Sequence[str]) -> str:
    text = "[" + ", ".join(jsons) + "]"
    size = len(text.encode("utf-8"))
    if size > MAX_VALUE_BYTES:
        raise PayloadTooLargeError(
            f"conversation {key!r} would be {size} bytes; LlamaIndex's layout keeps a whole "
            f"conversation in one value of at most {MAX_VALUE_BYTES} bytes (use layout='native')"
        )
    return text


def add(table: str, key: str, jsons: Sequence[str], idx: int | None, change: Change) -> Plan[None]:
    """Append messages (``idx``: insert the one message there, like ``list.insert``), once.

    The messages held are written back re-serialized. The write is conditional on the row
    read, so a concurrent change (ours or LlamaIndex's) makes it retry instead of being
    overwritten.
    """

    def attempt() -> Plan[None]:
        row = yield from _read_row(table, key)
        stored = [message_to_json(m) for m in _parse(key, row.history)]
        if idx is None:
            stored += jsons
        else:
            stored.insert(idx, jsons[0])
        yield from _write(table, key, row, _encode(key, stored), change)

    yield from record.until_done(table, key, change, attempt)


def replace(table: str, key: str, jsons: Sequence[str], change: Change) -> Plan[None]:
    """Replace the conversation with ``jsons`` (``[]``: remove it), whatever it held."""
    text = _encode(key, jsons) if jsons else None

    def attempt() -> Plan[None]:
        row = yield from _read_row(table, key)
        if row.history != text and (row.exists or text is not None):
            yield from _write(table, key, row, text, change)

    yield from record.until_done(table, key, change, attempt)


def _kept_json(key: str, position: int, item: Any) -> str:
    """An item a removal keeps: re-serialized when it is a message, else as it was."""
    text = _item_json(item)
    try:
        return message_to_json(message_from_json(text, key=key, position=position))
    except (CorruptDataError, SerializationError):
        return text


def remove(table: str, key: str, change: Change) -> Plan[list[ChatMessage] | None]:
    """Remove the conversation; return its messages (``None`` when there was no row).

    Raises:
        CorruptDataError: Something removed could not be read (the history, naming no
            position; or a message, naming the first such position). The row is removed
            all the same; the error holds what was stored.
    """

    def attempt() -> Plan[record.Outcome | None]:
        row = yield from _read_row(table, key)
        if row.history is None:
            return None
        messages: list[ChatMessage] = []
        removed: list[Any] = [None]  # a history that is no array: a replay raises too
        try:
            items = _items(key, row.history)
        except CorruptDataError as exc:
            error: CorruptDataError | None = exc
        else:
            removed = [_item_json(item) for item in items]
            messages, error = record.decode(key, enumerate(removed))
        yield from _write(table, key, row, None, change, removed)
        return messages, error

    return (yield from record.until_done(table, key, change, attempt)) or None


def take(
    table: str,
    key: str,
    select: Callable[[list[Any]], Sequence[int]],
    change: Change,
) -> Plan[list[ChatMessage]]:
    """Remove the messages at ``select(items)`` (the stored messages) atomically; return them.

    The write is conditional on the value read (like :func:`add`); the messages kept
    are written back as they were when they cannot be read.

    Raises:
        CorruptDataError: A message removed could not be read: it is removed all the same
            and the error names its position and holds it. Or, removing nothing, the
            history is not a JSON array (no position means anything in it).
    """

    def attempt() -> Plan[record.Outcome | None]:
        row = yield from _read_row(table, key)
        items = [] if row.history is None else _items(key, row.history)
        chosen = select(items)
        if not chosen:
            return None
        messages, error = record.decode(key, [(i, _item_json(items[i])) for i in chosen])
        kept = [_kept_json(key, i, item) for i, item in enumerate(items) if i not in chosen]
        removed = [_item_json(items[i]) for i in chosen]
        new = _encode(key, kept) if kept else None
        yield from _write(table, key, row, new, change, removed)
        return messages, error

    return (yield from record.until_done(table, key, change, attempt))


def keys_page(table: str, start: Any) -> Plan[tuple[list[str], Any]]:
    """Return one page of non-empty conversation keys and where the next page starts."""
    _, next_pk, rows, _ = yield key_page(table, start, ["history"], _PAGE_ROWS)
    histories = [(row.primary_key[0][1], cells(row).get("history", "")) for row in rows]
    return [k for k, h in histories if isinstance(h, str) and h.strip() not in ("", "[]")], next_pk


def clear(table: str) -> Plan[None]:
    """Delete every row of the table, page by page."""
    while True:
        _, _, rows, _ = yield key_page(table, None, ["session_id"], 200)
        if not rows:
            return
        request = ts.BatchWriteRowRequest()
        items = [ts.DeleteRowItem(ts.Row(r.primary_key), ts.Condition("IGNORE")) for r in rows]
        request.add(ts.TableInBatchWriteRowItem(table, items))
        yield Call("batch_write_row", (request,))
