"""LlamaIndex's AzureChatStore layout, read and written (``layout="llama_index"``).

* Chat table: one entity per message, PartitionKey = the key, RowKey = ``f"{idx:010}"``,
  properties ``role``, ``additional_kwargs``, ``blocks`` as JSON text (split into
  ``<name>_part_N`` over 64 KiB of UTF-16).
* Metadata table: PartitionKey = ``metadata_partition_key`` (default: the chat table's
  name), RowKey = the key, ``LastMessageRowKey`` and ``MessageCount`` (LlamaIndex uses
  the count as the next RowKey).

LlamaIndex appends with read-count-then-write (two writers lose one message) and can
leave holes in the RowKeys. Here the chat rows are the truth, read in RowKey order:
appends ``create`` the RowKeys after the last row in one transaction that also touches
that last row If-Match its ETag (so an append and a removal or insert planned on the same
last row never both commit), removals and replaces are conditional on each row's ETag
and retried from a fresh read when one changed, and the metadata entity (only a hint of
where the last row is) is brought up to date afterwards. What this layout cannot make
atomic: a change spanning more than one transaction (over 100 rows or 4 MiB) is written
in several, and the metadata entity trails the rows briefly. The first rows of an empty
conversation have no row to touch: their creation is never resent (a resend would create
them again after another writer removed them); the change writes the metadata entity
first (a claim), and when the creation's reply is lost it looks: rows of the record's
chain it started mean it landed, a claim no one changed since means it did not (a
removal that empties writes the entity first), anything else is an unknown outcome.

Each change is applied exactly once, also when the store resends it after a lost reply
(see :mod:`._record`). The record of a conversation's last changes lives on its last chat
row, in a property LlamaIndex's store ignores (:data:`RECORD`): every change already
commits in one transaction conditional on that row (appends touch it, removals delete or
rewrite it), and the same transaction moves the record, one change longer, onto the new
last row (clearing it on the old one). A change that empties the conversation leaves no
row to carry it, so it goes in two phases through the metadata entity: first the record
with its id, plus the pending removal (:data:`PENDING`: its id and the last row's RowKey
and ETag), written If-Match; then the rows' deletion (the commit); then the pending mark
is dropped with the emptied conversation's metadata entity (while the conversation has
no rows, that entity's record is the current one). A removal that finds another's
pending mark whose row still has that ETag first makes that removal fail (it touches the
row), so two removals never both take the record. A writer that
finds no record (an empty conversation, or rows LlamaIndex's own store wrote) starts a new
chain (epoch); a resend that finds a chain other than the one it planned on cannot tell
and raises ``BackendUnavailableError`` saying the outcome is unknown. So does a resend
within a change spanning several transactions (over 100 rows or 4 MiB), which no single
record names. LlamaIndex's own store writing the same conversation at the same moment as
a resend can defeat the record (it rewrites rows and metadata without it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from llama_index.storage.chat_store.azure._codec import (
    LLAMA_INDEX_RECORD,
    Action,
    Found,
    chunks,
    decode_key,
    decode_llama_index_message,
    encode_key,
    fits,
    found,
)
from llama_index.storage.chat_store.azure._record import RACE, Record, resent
from llama_index.storage.chat_store.azure._sdk import (
    PAGE,
    Batch,
    Get,
    Put,
    Query,
    Remove,
    Row,
    delete_rows,
    query_all,
)
from llama_index.storage.chat_store.core import ChatMessage, CorruptDataError
from llama_index.storage.chat_store.core.backend import (
    Change,
    ConflictError,
    Plan,
    corrupt_data_remedy,
)
from llama_index.storage.chat_store.core.meta import RetryAtOnceError, unknown_outcome

__all__ = ["PENDING", "RECORD", "LlamaIndexTable"]

_KEY_PROPS = frozenset({"PartitionKey", "RowKey", "Timestamp"})
RECORD = LLAMA_INDEX_RECORD
"""On the last chat row (and the metadata entity): the record of the last changes."""
PENDING = "ChatStorePending"
"""On the metadata entity: ``"<op> <RowKey> <ETag>"`` of a removal emptying the rows."""


def _row_key(index: int) -> str:
    return f"{index:010}"


def _index(row: Row, key: str) -> int:
    row_key = row.props.get("RowKey", "")
    if not (isinstance(row_key, str) and row_key.isdigit()):
        raise CorruptDataError(
            f"chat row {row_key!r} of key {key!r} is not a LlamaIndex row "
            f"({corrupt_data_remedy(key)})",
            key=key,
        )
    return int(row_key)


def _payload(row: Row) -> dict[str, Any]:
    """The message properties of a row (without its keys and the record)."""
    return {k: v for k, v in row.props.items() if k not in _KEY_PROPS and k != RECORD}


def _record_on(row: Row | None) -> Record:
    """The record a change plans on: the last row's, or a new chain when there is none."""
    found = Record.parse(row.props.get(RECORD)) if row is not None else None
    return found or Record.new()


def _address(pk: str, row: Row) -> dict[str, Any]:
    return {"PartitionKey": pk, "RowKey": row.props["RowKey"]}


def _deletes(pk: str, rows: Sequence[Row]) -> list[Action]:
    """Delete ``rows``, each If-Match the ETag read."""
    return [("delete", _address(pk, r), r.etag) for r in rows]


def _taking(pk: str, row: Row, record: Record) -> Action:
    """Write ``record`` onto ``row`` (a merge, If-Match the ETag read): it becomes the last."""
    return ("touch", {**_address(pk, row), RECORD: record.encode()}, row.etag)


def _moving(pk: str, row: Row, payload: dict[str, Any]) -> Action:
    """Write ``payload`` over ``row`` (If-Match the ETag read): a message moving there."""
    return ("update", {**_address(pk, row), **payload}, row.etag)


def _stored(row: Row) -> dict[str, Any]:
    return {k: v for k, v in row.props.items() if k != "Timestamp"}


def _pending(meta: Row | None) -> list[str] | None:
    """``[op, RowKey, ETag]`` of the emptying removal the metadata names, if any."""
    text = meta.props.get(PENDING) if meta is not None else None
    parts = text.split(" ", 2) if isinstance(text, str) else []
    return parts if len(parts) == 3 else None


def _found(key: str, rows: Sequence[Row], start: int) -> list[Found]:
    """What a removal found in rows read from position ``start`` (before removing them)."""
    return [
        found(decode_llama_index_message, row.props, key=key, position=start + i)
        for i, row in enumerate(rows)
    ]


def _settle(key: str, change: Change, conflict: ConflictError) -> None:
    """Let a conflict in a change of several transactions through, unless it may be our own.

    Raises:
        BackendUnavailableError: The request was resent after an unknown outcome.
    """
    if resent(change):
        raise unknown_outcome(
            key, "the change spans several transactions, which no record of changes names"
        ) from conflict


def _kept(rows: Sequence[Row], items: Sequence[Found], removed: Sequence[Row]) -> list[Found]:
    """What was found in the rows this call removed, in order."""
    gone = {r.props["RowKey"] for r in removed}
    return [m for r, m in zip(rows, items, strict=True) if r.props["RowKey"] in gone]


class LlamaIndexTable:
    """LlamaIndex's layout: its reads and the building blocks of its changes."""

    def __init__(self, chat_table: str, metadata_table: str, partition: str) -> None:
        self.table = chat_table
        self.meta_table = metadata_table
        self.partition = partition

    # -- reading ------------------------------------------------------------------------

    def _rows(
        self, key: str, *, keys_only: bool = False, start: str | None = None
    ) -> Plan[list[Row]]:
        """Read the conversation's chat rows in RowKey order (from RowKey ``start`` on)."""
        where = "PartitionKey eq @pk" + ("" if start is None else " and RowKey ge @lo")
        params = {"pk": encode_key(key)} if start is None else {"pk": encode_key(key), "lo": start}
        select = ("RowKey", RECORD) if keys_only else None
        return (yield from query_all(Query(self.table, where, params, select, PAGE)))

    def get_messages(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        rows = yield from self._rows(key)
        span = range(len(rows))[offset:]
        span = span if limit is None else span[:limit]
        return [decode_llama_index_message(rows[p].props, key=key, position=p) for p in span]

    def count_messages(self, key: str) -> Plan[int]:
        rows = yield from self._rows(key, keys_only=True)
        return len(rows)

    def keys_page(self, token: Any) -> Plan[tuple[list[str], Any]]:
        where = "PartitionKey eq @pk and MessageCount gt @zero"
        params = {"pk": self.partition, "zero": 0}
        rows, token = yield Query(self.meta_table, where, params, ("RowKey", "Key"), PAGE, token)
        return [decode_key(r.props["RowKey"], r.props.get("Key")) for r in rows], token

    # -- metadata -----------------------------------------------------------------------

    def _meta_entity(self, key: str, last: int | None, meta: Row | None) -> dict[str, Any]:
        """The metadata entity naming ``last`` as the last row (None: no rows).

        Other properties of ``meta`` (our record and pending mark among them) are kept.
        """
        entity = _stored(meta) if meta is not None else {}
        entity.update(
            PartitionKey=self.partition,
            RowKey=encode_key(key),
            LastMessageRowKey=_row_key(last or 0),
            MessageCount=0 if last is None else last + 1,
        )
        if entity["RowKey"] != key:
            entity["Key"] = key
        return entity

    def _created(self, key: str, entity: dict[str, Any]) -> Plan[bool]:
        """Create the metadata entity; False when the row it names was removed meanwhile.

        A creation has no ETag to be conditional on: a removal that emptied the
        conversation and refreshed the metadata before it would otherwise leave an entity
        naming rows that are gone (``get_keys`` reads it). Reading that row after the
        creation closes the gap: a removal after the read refreshes the metadata after it.
        """
        yield Put(self.meta_table, entity, "create")
        return (yield Get(self.table, encode_key(key), entity["LastMessageRowKey"])) is not None

    def _raise_meta(self, key: str, meta: Row | None, last: Row) -> Plan[None]:
        """Make the metadata say ``last`` is the last row, after an append created it.

        ``meta`` is the metadata as read before the append's first transaction, and the
        write is conditional on it: when a removal's own refresh changed or removed the
        entity meanwhile, the write fails and the metadata is recomputed from the rows.
        """
        entity = self._meta_entity(key, _index(last, key), meta)
        with contextlib.suppress(ConflictError):
            if meta is not None:
                yield Put(self.meta_table, entity, "update", meta.etag)
                return
            if (yield from self._created(key, entity)):
                return
        yield from self._refresh_meta(key)

    def _refresh_meta(self, key: str, *, done: str | None = None) -> Plan[None]:
        """Recompute the metadata from the chat rows (after removals).

        Every write is conditional on the entity read before the rows (a creation is
        checked after it), so the last refresh to commit saw the rows' last change.
        ``done``: the id of this call's emptying removal, whose pending mark goes. An
        emptied conversation's entity goes too, unless another removal's mark is on it
        (its resend may need the record there).
        """

        def attempt() -> Plan[None]:
            row = yield Get(self.meta_table, self.partition, encode_key(key))
            rows = yield from self._rows(key, keys_only=True)
            held = _pending(row)
            if not rows and row is not None and (held is None or held[0] == done):
                yield Remove(self.meta_table, self.partition, encode_key(key), row.etag)
                return
            if row is None:
                if not rows:
                    return
                entity = self._meta_entity(key, _index(rows[-1], key), None)
                if not (yield from self._created(key, entity)):
                    raise RetryAtOnceError  # it names a row gone since: again at once
                return
            entity = self._meta_entity(key, _index(rows[-1], key) if rows else None, row)
            if held is not None and held[0] == done:
                del entity[PENDING]
            if entity != _stored(row):
                yield Put(self.meta_table, entity, "update", row.etag)

        yield from RACE.run(key, f"Azure table {self.meta_table!r}", attempt)

    # -- the record of changes ----------------------------------------------------------

    def _won(self, key: str, planned: Record, op: str) -> Plan[bool]:
        """Whether change ``op``, planned on ``planned``, committed (its resend failed).

        Raises:
            BackendUnavailableError: The record cannot tell (see the module docstring).
        """
        rows = yield from self._rows(key, keys_only=True)
        if rows:
            now = Record.parse(rows[-1].props.get(RECORD))
        else:  # emptied: the metadata entity holds the record
            meta = yield Get(self.meta_table, self.partition, encode_key(key))
            now = Record.parse(meta.props.get(RECORD)) if meta is not None else None
        if now is not None and op in now.ops:
            return True
        if now is None or not now.knows_since(planned):
            raise unknown_outcome(
                key,
                "the conversation's record of changes cannot tell (more changes came in "
                "between than it holds, or LlamaIndex's own store wrote meanwhile)",
            )
        return False

    def _commit(
        self,
        key: str,
        actions: list[Action],
        planned: Record,
        change: Change,
        op: str = "",
        claim: Row | None = None,
    ) -> Plan[list[str]]:
        """Run one transaction that records ``op`` (default: the change's id) on ``planned``.

        Returns its ETags ([] when a resend found its own lost commit). ``claim``: the
        transaction creates an empty conversation's first rows, on that claim
        (:meth:`_claim`); it is never resent.

        Raises:
            ConflictError: A condition failed and nothing was committed.
        """
        change.check = False
        try:
            etags: list[str] = yield Batch(self.table, actions, resend=claim is None)
        except ConflictError:
            if not resent(change):
                raise
            if claim is not None:
                return (yield from self._first_landed(key, planned, claim))
            if (yield from self._won(key, planned, op or change.id)):
                return []
            raise
        return etags

    def _claim(self, key: str, meta: Row | None) -> Plan[Row]:
        """Write the metadata entity (``meta``: as read) before an empty conversation's first rows.

        Creating them has no row to be conditional on: resent after another writer removed
        them, the creation would succeed again. So it is never resent; when its reply is
        lost, :meth:`_first_landed` looks, and this claim's ETag tells it whether rows can
        have been removed since (every removal that empties writes the entity first).

        Raises:
            ConflictError: The entity changed since it was read.
        """
        entity = self._meta_entity(key, None, meta)
        verb, etag = ("create", None) if meta is None else ("update", meta.etag)
        return Row(entity, (yield Put(self.meta_table, entity, verb, etag)))

    def _claim_empty(self, key: str) -> Plan[Row]:
        """:meth:`_claim` on the metadata entity read now."""
        meta = yield Get(self.meta_table, self.partition, encode_key(key))
        return (yield from self._claim(key, meta))

    def _first_landed(self, key: str, planned: Record, claim: Row) -> Plan[list[str]]:
        """[] when the first rows (records on ``planned``, a new chain) were created.

        Any later change that keeps rows carries the record's chain on, so rows of that chain
        mean the creation landed; without them, it did not if the claim still stands.

        Raises:
            RetryAtOnceError: It did not land: the attempt starts over.
            BackendUnavailableError: The rows went and the claim with them: unknown.
        """
        rows = yield from self._rows(key, keys_only=True)
        now = Record.parse(rows[-1].props.get(RECORD)) if rows else None
        if now is not None and now.epoch == planned.epoch:
            return []
        meta = yield Get(self.meta_table, self.partition, encode_key(key))
        if meta is not None and meta.etag == claim.etag:
            raise RetryAtOnceError
        raise unknown_outcome(
            key, "the conversation's first messages may have been removed by another writer"
        )

    @staticmethod
    def _carry(action: Action, record: Record) -> Action:
        """``action`` writing ``record`` onto its row (which becomes the last one)."""
        verb, entity, etag = action
        return verb, {**entity, RECORD: record.encode()}, etag

    def _empty_rows(self, key: str, rows: Sequence[Row], change: Change) -> Plan[list[Row]]:
        """Delete every row (``rows``: all of them, in order); return those removed.

        In two phases (see the module docstring): the metadata takes the record and the
        pending mark, then the rows go.

        Raises:
            ConflictError: One changed meanwhile, or another removal is pending (nothing
                removed).
        """
        pk = encode_key(key)
        last = rows[-1]
        meta = yield Get(self.meta_table, self.partition, pk)
        held = _pending(meta)
        if held is not None and any(r.props["RowKey"] == held[1] and r.etag == held[2]
                                    for r in rows):  # fmt: skip
            # That removal may still commit: touching its row makes it fail for good.
            with contextlib.suppress(ConflictError):
                yield Batch(self.table, [("touch", {"PartitionKey": pk, "RowKey": held[1]},
                                          held[2])])  # fmt: skip
            raise ConflictError(f"another removal of key {key!r} is pending")
        planned = _record_on(last)
        if meta is None:  # (a RowKey that is not LlamaIndex's must not stop the removal)
            rk = last.props["RowKey"]
            entity = self._meta_entity(key, int(rk) if rk.isdigit() else None, None)
        else:
            entity = _stored(meta)
        op = change.id
        entity[RECORD] = planned.add(op).encode()
        entity[PENDING] = f"{op} {last.props['RowKey']} {last.etag}"
        verb, etag = ("create", None) if meta is None else ("update", meta.etag)
        change.check = False
        try:
            yield Put(self.meta_table, entity, verb, etag)
        except ConflictError:
            if not resent(change):
                raise
            again = yield Get(self.meta_table, self.partition, pk)
            if again is None or again.props.get(PENDING) != entity[PENDING]:
                raise
        removed = yield from self._remove(key, rows, _deletes(pk, rows), planned, change)
        yield from self._refresh_meta(key, done=op)
        return removed

    def _remove(
        self, key: str, rows: Sequence[Row], actions: list[Action], planned: Record, change: Change
    ) -> Plan[list[Row]]:
        """Remove ``rows`` by ``actions`` (their deletes, first) in one recorded transaction.

        Returns the rows removed. Rows too many for one transaction are only deleted, If-Match
        their ETags: not atomic, transaction by transaction, and row by row where one fails.
        """
        if fits(actions):
            yield from self._commit(key, actions, planned, change)
            return list(rows)
        change.check = False
        pk = encode_key(key)
        actions = _deletes(pk, rows)
        removed: list[Row] = []
        for chunk in chunks(actions):
            try:
                yield Batch(self.table, chunk)
                done = {a[1]["RowKey"] for a in chunk}
            except ConflictError as conflict:
                _settle(key, change, conflict)
                done = set()
                for _, entity, etag in chunk:
                    try:
                        yield Remove(self.table, pk, entity["RowKey"], etag)
                        done.add(entity["RowKey"])
                    except ConflictError as lost:
                        _settle(key, change, lost)
            removed += [r for r in rows if r.props["RowKey"] in done]
        return removed

    @property
    def _storage(self) -> str:
        return f"Azure table {self.table!r}"

    # -- clearing -----------------------------------------------------------------------

    def clear(self) -> Plan[None]:
        """Delete every entity of the chat table, then of our metadata partition."""
        for table, where, params in ((self.table, "PartitionKey ne @pk", {"pk": ""}),
                                     (self.meta_table, "PartitionKey eq @pk",
                                      {"pk": self.partition})):  # fmt: skip
            while rows := (yield Query(table, where, params, select=("PartitionKey", "RowKey"),
                                       page_size=PAGE))[0]:  # fmt: skip
                yield from delete_rows(table, rows)
