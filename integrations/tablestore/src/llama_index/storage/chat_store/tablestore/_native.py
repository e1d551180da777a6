"""Our layout: one row per message, one meta row per conversation, conditional writes.

Messages table, primary key ``(session_id STRING, gen INTEGER, seq INTEGER)``: a message row
holds ``message`` (the message JSON), ``w`` (the id of the write that put it there) and ``c``
(the conversation version that committed it). Meta table ``<table>_meta``, primary key
``session_id``: ``gen``, ``head``, ``tail``, ``ver``, and the conversation's catalog entry
(:mod:`._entry`). A conversation is exactly the rows ``(key, gen, head <= seq < tail)``; rows
outside that window are invisible leftovers.

Tablestore has no multi-row transactions (without local transactions), so the meta row is
the commit point: a writer puts its message rows where no reader looks yet (``seq >= tail``
with ``EXPECT_NOT_EXIST``, so two writers never share a slot), then moves ``tail`` with a
write conditional on ``ver``. Exactly one of several concurrent writers commits; the others
delete their rows (conditional on their ``w``) and retry, so no acknowledged message is
lost and each writer's order is kept. Replacing a conversation writes a new generation and
flips ``gen`` (atomic for readers), then deletes the old generation. Popping from either end
moves ``head``/``tail`` first, so two concurrent pops never return the same message. A
writer that died between its rows and its commit leaves rows in the next writer's way: after
a few unchanged looks at the meta row, that writer bumps ``ver`` (a fence: the dead write can
never commit) and deletes them.

Readers take the rows a meta row names only if that meta row was current from before the
rows were read until after: the meta row is read again with the rows (in the same
BatchGetRow, listed after them, for windows of up to 99 rows; else by a GetRow after the
GetRange). A row in the window of a current meta row is committed and stays (rows are
deleted only after a commit that moves the window off them), so such a read returns exactly
that state. Checking ``c`` alone would not do: a writer that planned on an old meta row
may put a row, with an old ``c``, into a slot a removal has just freed, until its commit
fails and it deletes the row again. (A BatchGetRow is not a snapshot: the emulator reads it
in order, the service may read the meta row a moment before a row. A row read after an
unchanged meta row can only be wrong if, within that one request, a removal committed and
deleted the row and a stale writer put its own there; a later ``c`` or a missing row shows
any other change.)

Commits are conditional on ``gen`` and ``ver`` together: ``ver`` starts again at 1 when a
deleted conversation is recreated, under a new random ``gen``. A store remembers the last
meta row it saw of each conversation (:attr:`Tables.seen`) and uses it as the "before" of a
read (then a read is one request), to plan an append (the rows are put at its ``tail`` and
committed conditionally on it: two requests), and to know which row a pop reads together
with the meta row (one BatchGetRow). A remembered row that another instance has since
changed costs the append the failed put (the slot is taken), or at worst the put, the failed
commit and the delete of its row, before it reads the meta row and tries again.

Every change is applied change, however often it is resent (see :mod:`._record`): its commit
writes its operation id (and, for a removal, what it removed) into the meta row's record in
the same conditional update. An attempt after a transport failure, or after one of its own
commits failed its condition, first reads the record: finding its id there, it applies
nothing and returns the recorded reply. For the record to outlive the conversation, an
emptied conversation keeps its meta row (``head == tail``, on a new generation, so the old
one is deleted without meeting new rows); it is listed nowhere and reads as empty. Rows put
by an attempt whose commit never landed are fenced off at once by the next attempt.

Every removal resolves what to remove on one meta row and commits conditionally on exactly
that row, so it returns what it removed. Damage (a meta row with tail < head or non-numbers,
a row missing from a window the unchanged meta row names, a cell that is not a message)
raises :class:`CorruptDataError` naming the key (and position). Reads and appends raise it
at change, changing nothing. A removal removes what it was asked all the same (corrupt data
must stay deletable), then raises it, saying so and holding what was stored (``data``):
see core's :func:`removal_error`. ``set_all`` replaces a damaged conversation silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Union

from llama_index.storage.chat_store.core import (
    ChatMessage,
    ChatStoreError,
    CorruptDataError,
    message_from_json,
)
from llama_index.storage.chat_store.core.backend import ConflictError, Plan, corrupt_data_remedy
from llama_index.storage.chat_store.core.cache import LruCache
from llama_index.storage.chat_store.core.meta import Race, RetryAtOnceError, span
from llama_index.storage.chat_store.tablestore import _record as record
from llama_index.storage.chat_store.tablestore._sdk import (
    Call,
    cells,
    get_range,
    get_row,
    key_page,
    ts,
)

__all__ = [
    "CACHED_CONVERSATIONS", "MESSAGE_PRIMARY_KEY", "META_PRIMARY_KEY", "Tables", "count", "get",
    "keys_page",
]  # fmt: skip

MESSAGE_PRIMARY_KEY = [("session_id", "STRING"), ("gen", "INTEGER"), ("seq", "INTEGER")]
META_PRIMARY_KEY = [("session_id", "STRING")]
_META_COLUMNS = ["gen", "head", "tail", "ver"]
PAGE_ROWS = 1000
_READ_RACE = Race(attempts=30)
"""How a read retries while writers keep changing the conversation under it."""
_HELD = ["message", "c", "w"]
"""The columns a removal reads of a row: its message, version and writer."""
CACHED_CONVERSATIONS = 4096
"""How many conversations' last-seen meta rows a store remembers."""
BATCH_GET_ROWS = 100
"""BatchGetRow reads at most 100 rows."""


@dataclass(frozen=True)
class Meta:
    """A conversation's commit record."""

    gen: int
    head: int
    tail: int
    ver: int

    @property
    def size(self) -> int:
        return self.tail - self.head


@dataclass(frozen=True)
class _Damaged:
    """A meta row that is not a commit record: only replacing or deleting it is possible.

    ``values`` are its columns as read: a write that removes it is conditional on them, so a
    repair by someone else in between is never overwritten.
    """

    values: dict[str, Any]
    problem: CorruptDataError

    @property
    def gen(self) -> int | None:
        gen = self.values.get("gen")
        return gen if isinstance(gen, int) and not isinstance(gen, bool) else None


@dataclass(frozen=True)
class _Gap:
    """The first row of a window that is missing, or was written after the meta row read."""

    seq: int


@dataclass(frozen=True)
class Tables:
    """The two tables of a native store, and what the store last saw of each conversation.

    ``seen`` only ever hints which rows to read: every commit is conditional on the meta
    row as read in the same operation.
    """

    messages: str
    meta: str
    seen: LruCache[str, Meta] = field(
        default_factory=lambda: LruCache(CACHED_CONVERSATIONS), compare=False, repr=False
    )

    def learn(self, key: str, meta: Meta | _Damaged | None) -> None:
        """Remember ``meta`` as the latest state seen of ``key`` (none, or damaged: forget)."""
        if isinstance(meta, Meta):
            self.seen.put(key, meta)
        else:
            self.seen.discard(key)


@dataclass(frozen=True)
class _Stored:
    seq: int
    json: str


_Window = Union[list[_Stored], _Gap, CorruptDataError]  # noqa: UP007 (a runtime alias on 3.10)


@dataclass(frozen=True)
class _Held:
    """A row in a window a removal read: its message cell as stored, and its writer.

    ``writer`` is ``None`` when the row is missing (or is not the meta row's: then the
    removal's commit, conditional on that meta row, fails and it reads again).
    """

    seq: int
    value: Any
    writer: str | None


def _pk(key: str, gen: Any, seq: Any) -> list[tuple[str, Any]]:
    return [("session_id", key), ("gen", gen), ("seq", seq)]


def _if_still(old: Meta | _Damaged) -> Any:
    """The condition that the meta row is still ``old``."""
    # Generation and version: ``ver`` starts again at 1 when a deleted conversation is
    # recreated, but under a new random generation, so an old state never matches again.
    # A damaged row, every column as read: one repaired by someone else in between stays theirs.
    values = old.values if isinstance(old, _Damaged) else {"gen": old.gen, "ver": old.ver}
    columns = [
        ts.SingleColumnCondition(name, value, ts.ComparatorType.EQUAL, pass_if_missing=False)
        for name, value in values.items()
    ]
    if len(columns) == 1:
        return ts.Condition(ts.RowExistenceExpectation.EXPECT_EXIST, columns[0])
    every = ts.CompositeColumnCondition(ts.LogicalOperator.AND)
    for column in columns:
        every.add_sub_condition(column)
    return ts.Condition(ts.RowExistenceExpectation.EXPECT_EXIST, every)


# -- reads ---------------------------------------------------------------------------------


def _meta_row(
    t: Tables, key: str, columns: list[str] = _META_COLUMNS
) -> Plan[tuple[Meta | _Damaged | None, dict[str, Any]]]:
    """Read ``columns`` of the meta row: parsed (and remembered), and as read."""
    _, row, _ = yield get_row(t.meta, key, columns)
    meta = _parse_meta(t, key, row)
    t.learn(key, meta)
    return meta, cells(row)


def _read_meta_any(t: Tables, key: str) -> Plan[Meta | _Damaged | None]:
    """Read the meta row; a damaged one is returned, for the operations that can remove it."""
    return (yield from _meta_row(t, key))[0]


def _read_meta(t: Tables, key: str) -> Plan[Meta | None]:
    """Read the meta row; raise :class:`CorruptDataError` (naming the key) if it is damaged."""
    return _intact((yield from _read_meta_any(t, key)))


def _intact(meta: Meta | _Damaged | None) -> Meta | None:
    """Return ``meta``; raise its :class:`CorruptDataError` (naming the key) if it is damaged."""
    if isinstance(meta, _Damaged):
        raise meta.problem
    return meta


def _with_meta(
    t: Tables, key: str, gen: int, seqs: range, columns: list[str], meta_first: bool
) -> Plan[tuple[Meta | None, dict[int, Any]]]:
    """Read rows ``seqs`` of generation ``gen`` and the meta row in one BatchGetRow.

    The meta row is listed first or last (its callers say why). Returns it (remembered) and
    the rows found, by seq.

    Raises:
        ChatStoreError: Tablestore could not read one of the rows.
        CorruptDataError: The meta row is damaged (the cache forgets the key).
    """
    pks = [_pk(key, gen, seq) for seq in seqs]
    rows_read = ts.TableInBatchGetRowItem(t.messages, pks, columns, max_version=1)
    meta_read = ts.TableInBatchGetRowItem(
        t.meta, [[("session_id", key)]], _META_COLUMNS, max_version=1
    )
    request = ts.BatchGetRowRequest()
    for table in (meta_read, rows_read) if meta_first else (rows_read, meta_read):
        request.add(table)
    response = yield Call("batch_get_row", (request,))
    row_items = response.get_result_by_table(t.messages)
    [meta_item] = response.get_result_by_table(t.meta)
    for item in [meta_item, *row_items] if meta_first else [*row_items, meta_item]:
        if not item.is_ok:
            raise ChatStoreError(
                f"Tablestore could not read conversation {key!r} from table "
                f"{item.table_name!r} ({item.error_code}: {item.error_message})"
            )
    parsed = _parse_meta(t, key, meta_item.row)
    t.learn(key, parsed)
    found = {
        seq: item.row
        for seq, item in zip(seqs, row_items, strict=True)
        if item.row is not None and item.row.attribute_columns
    }
    return _intact(parsed), found


def _parse_meta(t: Tables, key: str, row: Any) -> Meta | _Damaged | None:
    if row is None or not row.attribute_columns:
        return None
    values = cells(row)
    fields = [values.get(name) for name in _META_COLUMNS]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in fields):
        problem = "is unreadable"
    elif fields[2] < fields[1]:  # type: ignore[operator]
        problem = "ends before it starts (tail < head)"
    else:
        return Meta(*fields)  # type: ignore[arg-type]
    return _Damaged(values, CorruptDataError(
        f"the meta row of conversation {key!r} in table {t.meta!r} {problem}: {values!r} "
        f"({corrupt_data_remedy(key)})",
        key=key,
    ))  # fmt: skip


def _scan(t: Tables, key: str, gen: int, start: int, stop: int, columns: list[str]) -> Plan[Any]:
    """Return the rows ``start <= seq < stop`` of generation ``gen``, as stored."""
    found: list[Any] = []
    next_pk: Any = _pk(key, gen, start)
    while next_pk and len(found) < stop - start:
        high, limit = _pk(key, gen, stop), stop - start - len(found)
        _, next_pk, rows, _ = yield get_range(t.messages, next_pk, high, columns, limit)
        found.extend(rows)
    return found


def _read_window(t: Tables, key: str, meta: Meta, start: int, stop: int) -> Plan[_Window]:
    """Read rows ``start <= seq < stop`` of the meta's generation (:func:`_in_order`).

    Writer ids are not read (the SDK decodes cells in pure Python, so every column costs).
    """
    scanned = yield from _scan(t, key, meta.gen, start, stop, ["message", "c"])
    return _in_order(t, key, meta, start, stop, {row.primary_key[2][1]: row for row in scanned})


def _in_order(
    t: Tables, key: str, meta: Meta, start: int, stop: int, rows: dict[int, Any]
) -> _Window:
    """Rows ``start <= seq < stop`` of ``rows`` (by seq), or where they stop making sense.

    That is the first one missing or written after ``meta`` (a :class:`_Gap`), or the error
    of the first that is not text.
    """
    found: list[_Stored] = []
    for seq in range(start, stop):
        try:
            stored = _stored(t, key, meta, rows[seq]) if seq in rows else None
        except CorruptDataError as exc:
            return exc
        if stored is None:
            return _Gap(seq)
        found.append(stored)
    return found


def _rows(t: Tables, key: str, meta: Meta, start: int, stop: int) -> Plan[list[_Stored]]:
    """Read a window named by ``meta``.

    A row missing from the window while the meta row stays unchanged is not a race (every
    writer moves the meta row before it deletes rows in the window, and puts new rows
    outside it): the conversation is damaged, and waiting would not help.

    Raises:
        ConflictError: A row is missing and the meta row has moved since ``meta``.
        CorruptDataError: A row the unchanged meta row names is missing (or newer than it).
    """
    rows = yield from _read_window(t, key, meta, start, stop)
    if isinstance(rows, CorruptDataError):
        raise rows
    if not isinstance(rows, _Gap):
        return rows
    return (yield from _unless_moved(t, key, meta, _missing(t, key, rows.seq - meta.head)))


def _unless_moved(t: Tables, key: str, meta: Meta, problem: CorruptDataError) -> Plan[NoReturn]:
    """Raise ``problem`` if the meta row still is ``meta``, else :class:`ConflictError`.

    Damage found in rows read while the conversation changed may be the change's doing:
    the attempt reads again.
    """
    if (yield from _read_meta(t, key)) != meta:
        raise ConflictError(f"conversation {key!r} changed while being read")
    raise problem


def _window_then_meta(
    t: Tables, key: str, before: Meta, start: int, stop: int
) -> Plan[tuple[Meta | None, _Window]]:
    """Read rows ``start <= seq < stop`` that ``before`` names, then the meta row again.

    When the meta row read is still ``before``, nothing was committed from the moment
    ``before`` was current until that read, so the rows are exactly ``before``'s: a gap or
    a row that is not text (returned, not raised) then is damage. Up to 99 rows go in one
    BatchGetRow, the messages table ahead of the meta table; more take a GetRange and a
    GetRow.

    Raises:
        CorruptDataError: The meta row is damaged.
    """
    if stop - start >= BATCH_GET_ROWS:
        window = yield from _read_window(t, key, before, start, stop)
        return (yield from _read_meta(t, key)), window
    seqs = range(start, stop)
    meta, rows = yield from _with_meta(t, key, before.gen, seqs, ["message", "c"], False)
    return meta, _in_order(t, key, before, start, stop, rows)


def _missing(t: Tables, key: str, position: int) -> CorruptDataError:
    return CorruptDataError(
        f"conversation {key!r} position {position} in table {t.messages!r}: the row its "
        f"meta row names is missing ({corrupt_data_remedy(key)})",
        key=key,
        position=position,
    )


def _not_text(t: Tables, key: str, position: int, value: Any) -> CorruptDataError:
    data = bytes(value) if isinstance(value, (bytes, bytearray)) else repr(value)
    return CorruptDataError(
        f"conversation {key!r} position {position}: the row holds no message text in table "
        f"{t.messages!r}, a {type(value).__name__} ({corrupt_data_remedy(key)})",
        key=key,
        position=position,
        data=data,
    )


def _removal_window(t: Tables, key: str, meta: Meta, start: int, stop: int) -> Plan[list[_Held]]:
    """Read rows ``start <= seq < stop`` named by ``meta`` for a removal, whatever they hold.

    A row missing, or written after ``meta``, is returned with no writer rather than read
    again: the removal commits conditionally on ``meta``, so if the meta row moved the
    commit fails and the removal starts over; if it commits, the meta row did not move
    since it was read, and the row is really missing (damage, not a race).
    """
    scanned = yield from _scan(t, key, meta.gen, start, stop, _HELD)
    rows = {row.primary_key[2][1]: row for row in scanned}
    return [_held(meta, seq, rows.get(seq)) for seq in range(start, stop)]


def _held(meta: Meta, seq: int, row: Any) -> _Held:
    """Row ``seq`` of a removal's window as read (``row``: ``None`` when missing)."""
    values = cells(row)
    version = values.get("c", 0)
    if row is None or not isinstance(version, int) or version > meta.ver:
        return _Held(seq, None, None)
    return _Held(seq, values.get("message"), str(values.get("w", "")))


def _unreadable(t: Tables, key: str, meta: Meta, held: _Held) -> CorruptDataError | None:
    """Why ``held`` cannot be copied as message text; ``None`` if it can."""
    position = held.seq - meta.head
    if held.writer is None:
        return _missing(t, key, position)
    if not isinstance(held.value, str):
        return _not_text(t, key, position, held.value)
    return None


def _decode(
    t: Tables, key: str, meta: Meta, rows: Sequence[_Held]
) -> tuple[list[ChatMessage], CorruptDataError | None]:
    """Parse what a removal is about to remove (:func:`._record.decode`)."""
    found = [(h.seq - meta.head, _unreadable(t, key, meta, h) or h.value) for h in rows]
    return record.decode(key, found)


def _stored(t: Tables, key: str, meta: Meta, row: Any) -> _Stored | None:
    """Decode a message row read under ``meta``; ``None`` if a later write put it there."""
    values = cells(row)
    seq = row.primary_key[2][1]
    version = values.get("c", 0)
    if not isinstance(version, int) or version > meta.ver:
        return None  # a later write: the meta row we read is stale
    text = values.get("message")
    if not isinstance(text, str):
        raise _not_text(t, key, seq - meta.head, text)
    return _Stored(seq, text)


def _meta_and_last_row(t: Tables, key: str, seen: Meta) -> Plan[tuple[Meta | None, _Held | None]]:
    """Read the meta row and the last row ``seen`` names in one BatchGetRow.

    The row is returned only when the meta row still is ``seen``: then, if a commit
    conditional on it succeeds, nothing changed between the moment ``seen`` was read and
    that commit, so the row (read in between) is the one that meta names, even though the
    batch is not a snapshot (a missing row then is missing, not a race).
    """
    last = seen.tail - 1
    meta, rows = yield from _with_meta(t, key, seen.gen, range(last, seen.tail), _HELD, True)
    return meta, _held(meta, last, rows.get(last)) if meta == seen else None


def get(t: Tables, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
    """Return ``messages[offset:][:limit]`` from one consistent snapshot.

    The remembered meta row, else one read now, names the rows; they count only if the meta
    row read after them is unchanged (:func:`_window_then_meta`). An empty answer comes
    from a meta row read for this call.

    Raises:
        CorruptDataError: A row the unchanged meta row names is missing or not text.
        ChatStoreError: The conversation changed during each of :data:`_READ_RACE`'s reads.
    """
    known, fresh = t.seen.get(key), False

    def attempt() -> Plan[list[ChatMessage]]:
        nonlocal known, fresh
        if known is None and not fresh:
            known, fresh = (yield from _read_meta(t, key)), True
        start, stop = span(known.size if known else 0, offset, limit)
        if known is None or start >= stop:
            if fresh:
                return []
            known = None  # remembered as empty there: ask the meta row, at once
            raise RetryAtOnceError(f"conversation {key!r} was remembered as empty")
        meta, rows = yield from _window_then_meta(
            t, key, known, known.head + start, known.head + stop
        )
        if meta == known:
            if isinstance(rows, _Gap):
                raise _missing(t, key, rows.seq - meta.head)
            if isinstance(rows, CorruptDataError):
                raise rows
            return [message_from_json(r.json, key=key, position=r.seq - meta.head) for r in rows]
        # Changed while being read: let the writer finish (at once after a remembered row).
        lost = ConflictError if fresh else RetryAtOnceError
        known, fresh = meta, True
        raise lost(f"conversation {key!r} changed while being read")

    return (yield from _READ_RACE.run(key, f"table {t.messages!r}", attempt))


def count(t: Tables, key: str) -> Plan[int]:
    """Return the number of messages (one GetRow of the meta row)."""
    meta = yield from _read_meta(t, key)
    return meta.size if meta else 0


def keys_page(t: Tables, start: Any) -> Plan[tuple[list[str], Any]]:
    """Return one page of keys from the meta table and where the next page starts."""
    _, next_pk, rows, _ = yield key_page(t.meta, start, ["head", "tail"], PAGE_ROWS)
    counts = [(row.primary_key[0][1], cells(row)) for row in rows]
    return [key for key, c in counts if c.get("tail", 0) != c.get("head", 0)], next_pk
