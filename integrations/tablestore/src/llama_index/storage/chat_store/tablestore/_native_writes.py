"""Our layout's changes (see :mod:`._native` for the layout): conditional writes, each once.

Every change commits by one conditional write of the conversation's meta row carrying the
change's op id (:mod:`._record`); rows are put before and deleted after that commit, so a
reader never sees a half-made change.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from llama_index.storage.chat_store.core import ChatMessage, ChatStoreError
from llama_index.storage.chat_store.core.backend import Change, ConflictError, Plan
from llama_index.storage.chat_store.core.meta import RetryAtOnceError
from llama_index.storage.chat_store.core.tools import safe_trim_plan
from llama_index.storage.chat_store.tablestore import _record as record
from llama_index.storage.chat_store.tablestore._entry import stamp
from llama_index.storage.chat_store.tablestore._native import (
    _META_COLUMNS,
    MESSAGE_PRIMARY_KEY,
    META_PRIMARY_KEY,
    Meta,
    Tables,
    _Damaged,
    _decode,
    _Held,
    _if_still,
    _meta_and_last_row,
    _pk,
    _read_meta,
    _read_meta_any,
    _removal_window,
    _rows,
    _unless_moved,
    _unreadable,
)
from llama_index.storage.chat_store.tablestore._sdk import (
    CONDITION_FAILED,
    Call,
    cells,
    get_range,
    ts,
)

__all__ = [
    "add", "clear", "delete_all", "delete_at", "delete_oldest", "insert", "pop_last", "set_all",
]  # fmt: skip

BATCH_ROWS = 200
"""BatchWriteRow takes at most 200 rows."""
BATCH_BYTES = 3 * 1024 * 1024
"""BatchWriteRow takes at most 4 MB; keep a margin for keys and names."""
_STUCK_LOOKS = 3


# -- writes --------------------------------------------------------------------------------


def _new_gen() -> int:
    return random.getrandbits(62) + 1


def _chunks(items: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    chunks: list[list[Any]] = [[]]
    total = 0
    for item, size in zip(items, sizes, strict=True):
        if chunks[-1] and (len(chunks[-1]) >= BATCH_ROWS or total + size > BATCH_BYTES):
            chunks.append([])
            total = 0
        chunks[-1].append(item)
        total += size
    return [c for c in chunks if c]


def _batch(table: str, items: list[Any]) -> Plan[list[Any]]:
    """Run one BatchWriteRow; return each row's result in request order."""
    request = ts.BatchWriteRowRequest()
    request.add(ts.TableInBatchWriteRowItem(table, items))
    response = yield Call("batch_write_row", (request,))
    results = [
        *response.table_of_put.get(table, []),
        *response.table_of_update.get(table, []),
        *response.table_of_delete.get(table, []),
    ]
    results.sort(key=lambda item: item.index)
    for item in results:
        if not item.is_ok and item.error_code != CONDITION_FAILED:
            raise ChatStoreError(
                f"Tablestore rejected a row of table {table!r} ({item.error_code}: "
                f"{item.error_message})"
            )
    return results


def _put_rows(
    t: Tables, key: str, gen: int, first: int, jsons: Sequence[str], writer: str, ver: int
) -> Plan[None]:
    """Put message rows at ``first...`` where none exist.

    Raises:
        ConflictError: A slot was taken (rows of a batch may have been put all the same).
    """
    rows = [
        ts.Row(_pk(key, gen, first + i), [("message", text), ("w", writer), ("c", ver)])
        for i, text in enumerate(jsons)
    ]
    absent = ts.Condition(ts.RowExistenceExpectation.EXPECT_NOT_EXIST)
    if len(rows) == 1:
        yield Call("put_row", (t.messages, rows[0], absent))
        return
    items = [ts.PutRowItem(row, absent) for row in rows]
    for chunk in _chunks(items, [len(text.encode("utf-8")) for text in jsons]):
        if not all(item.is_ok for item in (yield from _batch(t.messages, chunk))):
            raise ConflictError(f"a slot of conversation {key!r} was taken")


def _delete_rows(
    t: Tables, key: str, gen: int, rows: Sequence[tuple[int, str | None]]
) -> Plan[None]:
    """Delete rows by seq, each only if still written by the given writer (None: any)."""
    items = []
    for seq, writer in rows:
        same = ts.SingleColumnCondition("w", writer, ts.ComparatorType.EQUAL, pass_if_missing=False)
        condition = ts.Condition(ts.RowExistenceExpectation.IGNORE, same if writer else None)
        items.append(ts.DeleteRowItem(ts.Row(_pk(key, gen, seq)), condition))
    for chunk in _chunks(items, [0] * len(items)):
        yield from _batch(t.messages, chunk)


def _delete_range(table: str, low: Any, high: Any, column: str) -> Plan[None]:
    """Delete every row of ``table`` from primary key ``low`` to ``high``, page by page.

    Reads one primary key ``column`` only.
    """
    while True:
        _, _, rows, _ = yield get_range(table, low, high, [column], BATCH_ROWS)
        if not rows:
            return
        ignore = ts.Condition(ts.RowExistenceExpectation.IGNORE)
        yield from _batch(table, [ts.DeleteRowItem(ts.Row(r.primary_key), ignore) for r in rows])


def _delete_generation(t: Tables, key: str, gen: int) -> Plan[None]:
    """Delete every row of a retired generation."""
    yield from _delete_range(
        t.messages, _pk(key, gen, ts.INF_MIN), _pk(key, gen, ts.INF_MAX), "seq"
    )


def _commit(
    t: Tables,
    key: str,
    old: Meta | _Damaged | None,
    new: Meta,
    change: Change | None = None,
    removed: Sequence[Any] | None = None,
    entry: dict[str, Any] | None = None,
) -> Plan[None]:
    """Replace the meta row if it is still ``old``.

    ``change``: the change this commit applies, recorded in the same write (with the cells
    it ``removed``, for a removal) and stamped in the catalog entry (:mod:`._entry`; with
    ``entry``'s columns over the stamp, ``None`` removing one); a failed commit makes it
    check the record next. A commit without a change (a fence) changes no entry.

    Raises:
        ConflictError: Another writer moved the meta row.
    """
    pk = [("session_id", key)]
    values = [(name, getattr(new, name)) for name in _META_COLUMNS]
    dropped: list[str] = []
    if change is not None:
        values.append((record.column(new.ver), record.entry(change.id, removed)))
        began = not isinstance(old, Meta) or old.size == 0
        stamped, dropped = stamp(began, new.size == 0)
        stamped.update(entry or {})
        values += [(name, value) for name, value in stamped.items() if value is not None]
        dropped = [n for n in sorted({*dropped, *stamped}) if stamped.get(n) is None]
    try:
        if old is None:
            absent = ts.Condition(ts.RowExistenceExpectation.EXPECT_NOT_EXIST)
            yield Call("put_row", (t.meta, ts.Row(pk, values), absent))
        else:
            columns = {"put": values, "delete_all": dropped} if dropped else {"put": values}
            yield Call("update_row", (t.meta, ts.Row(pk, columns), _if_still(old)))
    except ConflictError:
        if change is not None:
            change.check = True
        raise
    t.learn(key, new)


class _Writer:
    """One logical write's attempts: a fresh writer id each time, stuck-slot detection.

    In an attempt after a transport failure, rows in the way may be the change's own from
    an attempt whose put landed and whose commit did not: they are fenced off at once.
    """

    def __init__(self, t: Tables, key: str, change: Change) -> None:
        self.t = t
        self.key = key
        self.change = change
        self.stuck_looks = 1 if change.attempts > 1 else _STUCK_LOOKS
        self.looks: dict[tuple[int, int], int] = {}

    def place(
        self, meta: Meta | None, base: Meta, first: int, jsons: Sequence[str], new: Meta
    ) -> Plan[None]:
        """Put rows at ``first...`` of ``base.gen`` and commit ``new`` over ``meta``.

        Raises:
            ConflictError: A slot was taken or the meta row moved (the rows put are deleted).
        """
        writer = uuid.uuid4().hex
        own = [(first + i, writer) for i in range(len(jsons))]
        try:
            yield from _put_rows(self.t, self.key, base.gen, first, jsons, writer, new.ver)
        except ConflictError:
            if len(jsons) > 1:  # some rows of the batch may have been put
                yield from _delete_rows(self.t, self.key, base.gen, own)
            if meta is not None:
                yield from self._unblock(meta, first, len(jsons))
            raise
        try:
            yield from _commit(self.t, self.key, meta, new, self.change)
        except ConflictError:
            yield from _delete_rows(self.t, self.key, base.gen, own)
            raise

    def _unblock(self, meta: Meta, first: int, n: int) -> Plan[None]:
        spot = (meta.ver, first)
        self.looks[spot] = self.looks.get(spot, 0) + 1
        if self.looks[spot] < self.stuck_looks:
            return
        # The meta row has not moved across several conflicts: the rows in the way belong to
        # a writer that died before committing. Fence it off, then remove its rows.
        try:
            yield from _commit(self.t, self.key, meta, replace(meta, ver=meta.ver + 1))
        except ConflictError:
            return
        low, high = _pk(self.key, meta.gen, first), _pk(self.key, meta.gen, first + n)
        _, _, rows, _ = yield get_range(self.t.messages, low, high, ["w"])
        blocking = [(row.primary_key[2][1], str(cells(row).get("w", ""))) for row in rows]
        yield from _delete_rows(self.t, self.key, meta.gen, blocking)


def _append_once(w: _Writer, meta: Meta | None, jsons: Sequence[str]) -> Plan[None]:
    base = meta or Meta(gen=_new_gen(), head=0, tail=0, ver=0)
    new = replace(base, tail=base.tail + len(jsons), ver=base.ver + 1)
    yield from w.place(meta, base, base.tail, jsons, new)


def add(t: Tables, key: str, jsons: Sequence[str], change: Change) -> Plan[None]:
    """Append messages atomically (one commit for the whole batch).

    The first attempt plans on the remembered meta row, if any (its commit is conditional
    on it; losing there, the next attempt starts at once); the others read the meta row.
    """
    w = _Writer(t, key, change)
    known = t.seen.get(key)

    def attempt() -> Plan[None]:
        nonlocal known
        hint, known = known, None
        try:
            yield from _append_once(w, hint or (yield from _read_meta(t, key)), jsons)
        except ConflictError as exc:
            if hint is None:
                raise
            raise RetryAtOnceError(f"conversation {key!r} moved since last seen") from exc

    yield from record.until_done(t.meta, key, change, attempt)


def _rewrite_once(
    t: Tables,
    key: str,
    meta: Meta | _Damaged | None,
    jsons: Sequence[str],
    change: Change,
    removed: Sequence[Any] | None = None,
) -> Plan[None]:
    """Write ``jsons`` as a new generation and flip to it, then delete the old one.

    A damaged meta row is replaced too (conditional on its columns as read).

    Raises:
        ConflictError: ``meta`` moved (the new generation is deleted again).
    """
    if not jsons and (meta is None or (isinstance(meta, Meta) and meta.size == 0)):
        return
    # Emptying too keeps the meta row (with its record), on a new generation: deleting the
    # old one then never meets rows appended afterwards.
    ver = meta.ver + 1 if isinstance(meta, Meta) else 1
    new = Meta(gen=_new_gen(), head=0, tail=len(jsons), ver=ver)
    try:
        yield from _put_rows(t, key, new.gen, 0, jsons, uuid.uuid4().hex, new.ver)
        yield from _commit(t, key, meta, new, change, removed)
    except ConflictError:
        if jsons:
            yield from _delete_generation(t, key, new.gen)
        raise
    if meta is not None and meta.gen is not None:
        yield from _delete_generation(t, key, meta.gen)


def set_all(t: Tables, key: str, jsons: Sequence[str], change: Change) -> Plan[None]:
    """Replace the conversation: readers see the old one or the new one, never a mix.

    Works on a damaged conversation too (unreadable meta row or messages): nothing old is
    read but the meta row.
    """

    def attempt() -> Plan[None]:
        yield from _rewrite_once(t, key, (yield from _read_meta_any(t, key)), jsons, change)

    yield from record.until_done(t.meta, key, change, attempt)


def insert(t: Tables, key: str, idx: int, text: str, change: Change) -> Plan[None]:
    """Insert like ``list.insert``: O(1) at either end, a generation rewrite in the middle."""
    w = _Writer(t, key, change)

    def attempt() -> Plan[None]:
        meta = yield from _read_meta(t, key)
        size = meta.size if meta else 0
        position = idx if idx >= 0 else max(0, size + idx)
        if meta is None or position >= size:
            yield from _append_once(w, meta, [text])
        elif position == 0:
            new = replace(meta, head=meta.head - 1, ver=meta.ver + 1)
            yield from w.place(meta, meta, meta.head - 1, [text], new)
        else:
            jsons = [r.json for r in (yield from _rows(t, key, meta, meta.head, meta.tail))]
            jsons.insert(position, text)
            yield from _rewrite_once(t, key, meta, jsons, change)

    yield from record.until_done(t.meta, key, change, attempt)


# Each removal below plans on one meta row and commits conditionally on exactly that row, so
# what it returns is what it removed.


def _pop_once(
    t: Tables, key: str, meta: Meta, held: _Held | None, change: Change
) -> Plan[record.Outcome]:
    """Remove the last message ``meta`` names (``held``: that row, when already read)."""
    if held is None:
        [held] = yield from _removal_window(t, key, meta, meta.tail - 1, meta.tail)
    messages, error = _decode(t, key, meta, [held])
    new = replace(meta, tail=meta.tail - 1, ver=meta.ver + 1)
    yield from _commit(t, key, meta, new, change, [held.value])
    if held.writer is not None:
        yield from _delete_rows(t, key, meta.gen, [(held.seq, held.writer)])
    return messages, error


def _oldest_once(
    t: Tables, key: str, meta: Meta, take: int, change: Change
) -> Plan[record.Outcome]:
    """Remove the first ``take`` messages ``meta`` names (moves ``head``; no renumbering)."""
    rows = yield from _removal_window(t, key, meta, meta.head, meta.head + take)
    messages, error = _decode(t, key, meta, rows)
    removed = [r.value for r in rows]
    if take >= meta.size:
        yield from _rewrite_once(t, key, meta, [], change, removed)
    else:
        new = replace(meta, head=meta.head + take, ver=meta.ver + 1)
        yield from _commit(t, key, meta, new, change, removed)
        present = [(r.seq, r.writer) for r in rows if r.writer is not None]
        yield from _delete_rows(t, key, meta.gen, present)
    return messages, error


def _inside_once(
    t: Tables, key: str, meta: Meta, position: int, change: Change
) -> Plan[record.Outcome]:
    """Remove the message at ``position`` (not at either end): a generation rewrite.

    The other messages are copied as stored (text that is not a message included); a
    missing row or a cell that is not text among them raises :class:`CorruptDataError`
    removing nothing, since the rewrite could not keep it.
    """
    rows = yield from _removal_window(t, key, meta, meta.head, meta.tail)
    kept = [r for i, r in enumerate(rows) if i != position]
    problem = next(filter(None, (_unreadable(t, key, meta, r) for r in kept)), None)
    if problem is not None:
        yield from _unless_moved(t, key, meta, problem)
    messages, error = _decode(t, key, meta, rows[position : position + 1])
    removed = [rows[position].value]
    yield from _rewrite_once(t, key, meta, [r.value for r in kept], change, removed)
    return messages, error


def pop_last(t: Tables, key: str, change: Change) -> Plan[ChatMessage | None]:
    """Remove and return the last message; concurrent pops never share one.

    With a remembered meta row, its last row is read together with the meta row (one
    request instead of two); when that meta row turns out stale, the read serves as the
    meta read and the right row is read after it.
    """
    seen = t.seen.get(key)

    def attempt() -> Plan[record.Outcome | None]:
        nonlocal seen
        row: _Held | None = None
        if seen is not None:
            meta, row = yield from _meta_and_last_row(t, key, seen)
            seen = None
        else:
            meta = yield from _read_meta(t, key)
        if meta is None or meta.size == 0:
            return None
        return (yield from _pop_once(t, key, meta, row, change))

    return next(iter((yield from record.until_done(t.meta, key, change, attempt))), None)


def delete_oldest(
    t: Tables, key: str, n: int, change: Change, tool_safe: bool = False
) -> Plan[list[ChatMessage]]:
    """Remove and return the first ``n`` messages.

    ``tool_safe``: also the tool results that would lead what is left (read after the first
    ``n`` under the same meta row, which the removal's commit is conditional on).

    Raises:
        CorruptDataError: One of them could not be read; they are removed all the same.
    """

    def attempt() -> Plan[record.Outcome | None]:
        meta = yield from _read_meta(t, key)
        if meta is None or n <= 0 or meta.size == 0:
            return None
        take = min(n, meta.size)

        def stored(lo: int, hi: int) -> Plan[list[Any]]:  # positions [lo, hi), as stored
            rows = yield from _removal_window(t, key, meta, meta.head + lo, meta.head + hi)
            return [r.value for r in rows]

        if tool_safe:
            take = yield from safe_trim_plan(stored, take, meta.size)
        return (yield from _oldest_once(t, key, meta, take, change))

    return (yield from record.until_done(t.meta, key, change, attempt))


def delete_at(t: Tables, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
    """Remove the message at ``idx``: O(1) at either end, a generation rewrite in between.

    The position is resolved on the meta row read, and the removal commits only if that
    meta row is unchanged: a concurrent append never makes it remove the new last message.

    Raises:
        CorruptDataError: The message could not be read; it is removed all the same. (Also,
            removing nothing, when another message of the conversation is missing or not
            text and the message is neither first nor last: the rewrite could not keep it.)
    """

    def attempt() -> Plan[record.Outcome | None]:
        meta = yield from _read_meta(t, key)
        size = meta.size if meta else 0
        position = idx + size if idx < 0 else idx
        if meta is None or not 0 <= position < size:
            return None
        if position == size - 1:
            return (yield from _pop_once(t, key, meta, None, change))
        if position == 0:
            return (yield from _oldest_once(t, key, meta, 1, change))
        return (yield from _inside_once(t, key, meta, position, change))

    return next(iter((yield from record.until_done(t.meta, key, change, attempt))), None)


def delete_all(t: Tables, key: str, change: Change) -> Plan[list[ChatMessage] | None]:
    """Remove the conversation and return its messages (``None`` when it had none).

    Damaged data never blocks the removal: a damaged meta row is removed conditionally on
    its columns as read (with the rows of its generation, when that is readable).

    Raises:
        CorruptDataError: Something removed could not be read (a message, naming the first
            such position and holding its data; or the meta row, naming no position). The
            conversation is removed all the same.
    """

    def attempt() -> Plan[record.Outcome | None]:
        meta = yield from _read_meta_any(t, key)
        if meta is None or (isinstance(meta, Meta) and meta.size == 0):
            return None
        if isinstance(meta, _Damaged):
            yield from _rewrite_once(t, key, meta, [], change, [])
            return [], meta.problem
        rows = yield from _removal_window(t, key, meta, meta.head, meta.tail)
        removing = _decode(t, key, meta, rows)
        yield from _rewrite_once(t, key, meta, [], change, [r.value for r in rows])
        return removing

    return (yield from record.until_done(t.meta, key, change, attempt)) or None


def clear(t: Tables) -> Plan[None]:
    """Delete every row of both tables, page by page."""
    t.seen.clear()
    for table, pk in ((t.meta, META_PRIMARY_KEY), (t.messages, MESSAGE_PRIMARY_KEY)):
        low = [(name, ts.INF_MIN) for name, _ in pk]
        high = [(name, ts.INF_MAX) for name, _ in pk]
        yield from _delete_range(table, low, high, pk[0][0])
