"""The native layout's changes: appends, inserts, replaces and removals, as plans.

The layout itself (the meta entity, generations, the keys partition, the record of
operation ids) is described in :mod:`._native`, which also holds the reads and the
building blocks (conditional commits, rewrites, unlisting) these plans are made of.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.storage.chat_store.azure._codec import (
    BATCH_MAX_OPS,
    encode_key,
    is_tool_result_payload,
    taken,
)
from llama_index.storage.chat_store.azure._native import (
    KEYS_PARTITION,
    META,
    ORDER_PARTITION,
    PAGE,
    Meta,
    NativeTable,
    missing,
    new_gen,
    payload_of,
)
from llama_index.storage.chat_store.azure._sdk import (
    Action,
    Batch,
    Query,
    Remove,
    Row,
    backoff,
    chunks,
    delete_rows,
    fits,
)
from llama_index.storage.chat_store.core import ChatMessage, ChatStoreError, CorruptDataError
from llama_index.storage.chat_store.core.backend import Change, ConflictError, Plan, removal_error
from llama_index.storage.chat_store.core.tools import safe_trim_plan

__all__ = ["NativeLayout"]

_MAX_ATTEMPTS = 200


def _tool_result(row: Row | None) -> bool:
    return row is not None and is_tool_result_payload(row.props)


class NativeLayout(NativeTable):
    """Plans for every store operation in the native layout."""

    def _delete_generation(self, pk: str, gen: str) -> Plan[None]:
        """Delete every row of a generation (invisible rows: order and atomicity don't matter)."""
        params = {"pk": pk, "lo": f"{gen}:", "hi": f"{gen};"}
        while True:
            rows, _ = yield Query(
                self.table,
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                params,
                select=("PartitionKey", "RowKey"),
                page_size=BATCH_MAX_OPS,
            )
            if not rows:
                return
            yield from delete_rows(self.table, rows)

    def _rewrite(
        self, meta: Meta, payloads: Sequence[dict[str, Any]], op: str
    ) -> tuple[Meta, list[Action]]:
        """Return the meta and the operations making ``payloads`` the whole conversation.

        The operations are the meta flip, the rows of a new generation, then the deletes of
        the visible rows of ``meta``.
        """
        new = meta.change(op, gen=new_gen(), head=0, next=len(payloads))
        rows = [("upsert", self._row(meta, new.gen, i, p), None) for i, p in enumerate(payloads)]
        drops = [self._delete(meta, s) for s in range(meta.head, meta.next)]
        return new, [self._meta_action(meta, new), *rows, *drops]

    def _replace(
        self, meta: Meta, new: Meta, actions: list[Action], change: Change, *, staged: bool = False
    ) -> Plan[Meta | None]:
        """Commit a :meth:`_rewrite`; return the new meta, or None when ``meta`` had changed.

        One transaction when it fits (and not ``staged``); else the new rows first, then the
        conditional flip, then the old generation's deletion (nothing visible changes when
        the flip fails). The staged way never names an old row, so it also replaces a
        conversation whose rows are missing.
        """
        if fits(actions) and not staged:
            try:
                return (yield from self._commit(meta, new, actions, change))
            except ConflictError:
                return None
        rows = [a for a in actions[1:] if a[0] == "upsert"]
        for chunk in chunks(rows):
            yield Batch(self.table, chunk)
        try:
            # A flip resent after a lost reply that fails its condition on its own commit
            # is told apart by the record: then the new generation is the conversation.
            committed = yield from self._put_meta(meta, new, change)
        except ConflictError:
            yield from self._delete_generation(meta.pk, new.gen)
            return None
        if meta.etag is not None:
            yield from self._delete_generation(meta.pk, meta.gen)
        return committed

    def _empty(self, meta: Meta, rows: Sequence[Row], change: Change) -> Plan[Meta | None]:
        """Remove every visible message (``rows``, read at ``meta``); return the new meta.

        Returns None when the meta entity changed since ``meta`` (and not by this call's
        own commit, its reply lost). Only rows that exist are deleted, so a conversation
        missing some is removed all the same.
        """
        new = meta.change(change.id, gen=new_gen(), head=0, next=0)
        actions = [self._meta_action(meta, new)]
        actions += [("delete", {"PartitionKey": meta.pk, "RowKey": r.props["RowKey"]}, None)
                    for r in rows]  # fmt: skip
        one = fits(actions)
        try:
            if one:
                committed: Meta | None = yield from self._commit(meta, new, actions, change)
            else:
                committed = yield from self._put_meta(meta, new, change)
        except ConflictError:
            committed = None
        if committed is not None and not one:
            yield from self._delete_generation(meta.pk, meta.gen)
        return committed

    def append(self, key: str, payloads: Sequence[dict[str, Any]], change: Change) -> Plan[None]:
        op = change.id
        meta, unread = yield from self._meta_to_write(key)
        for attempt in range(_MAX_ATTEMPTS):
            if meta.count == 0:
                yield from self._list_key(meta)
            new = meta.change(op, next=meta.next + len(payloads))
            rows = [("upsert", self._row(meta, meta.gen, meta.next + i, p), None)
                    for i, p in enumerate(payloads)]  # fmt: skip
            actions = [self._meta_action(meta, new), *rows]
            if fits(actions):
                try:
                    yield from self._commit(meta, new, actions, change)
                    return
                except ConflictError:
                    meta = yield from self.read_meta(key)
                    if unread:  # the remembered meta was stale: one retry on the fresh read
                        unread = False
                        continue
            elif unread:  # a rewrite costs too much to risk on a stale meta
                meta, unread = (yield from self.read_meta(key)), False
                continue
            else:
                existing = yield from self._rows_at(meta, 0, meta.count)
                if existing is not None:
                    old = [payload_of(r) for r in existing]
                    new, rewrite = self._rewrite(meta, [*old, *payloads], op)
                    if (yield from self._replace(meta, new, rewrite, change)) is not None:
                        return
            yield backoff(attempt)
            meta = yield from self.read_meta(key)
        raise ChatStoreError(f"too much contention appending to key {key!r}")

    def replace(self, key: str, payloads: Sequence[dict[str, Any]], change: Change) -> Plan[None]:
        if not payloads:
            yield from self.delete_all(key, change, read=False)
            return
        op = change.id
        meta, unread = yield from self._meta_to_write(key)
        staged = False
        for attempt in range(_MAX_ATTEMPTS):
            new, actions = self._rewrite(meta, payloads, op)
            if unread and not fits(actions):  # staging costs too much to risk on a stale meta
                meta, unread = (yield from self.read_meta(key)), False
                continue
            if meta.count == 0:
                yield from self._list_key(meta)
            if (yield from self._replace(meta, new, actions, change, staged=staged)) is not None:
                return
            fresh = yield from self.read_meta(key)
            if fresh.etag == meta.etag:
                # The meta entity held, so a row delete failed: rows it names are missing.
                # Staging never names old rows, and replacing corrupt data must work.
                staged = True
                continue
            meta = fresh
            if unread:  # the remembered meta was stale: one retry on the fresh read
                unread = False
                continue
            yield backoff(attempt)
            meta = yield from self.read_meta(key)
        raise ChatStoreError(f"too much contention replacing key {key!r}")

    def delete_all(
        self, key: str, change: Change, *, read: bool = True
    ) -> Plan[list[ChatMessage] | None]:
        """Remove the conversation; return its messages (None if there were none).

        ``read=False``: without reading the messages (works on corrupt data; returns None).
        A meta entity that cannot be read is deleted with every entity of its partition;
        rows a readable meta entity names but that are missing are skipped.

        Raises:
            CorruptDataError: A message is missing or unreadable, or the meta entity is:
                the conversation is removed all the same (one transaction with the rest,
                when it fits), then core's ``removal_error`` of the first such position.
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        for attempt in range(_MAX_ATTEMPTS):
            try:
                meta = yield from self.read_meta(key)
            except CorruptDataError as exc:
                yield from self._purge(key)
                if read:
                    raise removal_error(exc, self._storage) from exc
                return None
            if meta.count == 0:
                return None
            span = yield from self._span(meta, 0, meta.count)
            if span is not None:
                items = self._found(meta, span, 0) if read else []  # before removing anything
                rows = [row for row in span if row is not None]
                emptied = yield from self._empty(meta, rows, change)
                if emptied is not None:
                    yield from self._finish_removal(emptied)
                    return taken(items, self.table) if read else None
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention deleting key {key!r}")

    def _purge(self, key: str) -> Plan[None]:
        """Delete every entity of a conversation whose meta entity is unreadable."""
        pk = encode_key(key)
        while True:
            rows, _ = yield Query(
                self.table,
                "PartitionKey eq @pk",
                {"pk": pk},
                select=("PartitionKey", "RowKey"),
                page_size=BATCH_MAX_OPS,
            )
            if not rows:
                break
            for row in rows:
                yield Remove(self.table, pk, row.props["RowKey"])
        self._seen.discard(key)
        yield from self._drop_listing(key, pk)

    def delete_at(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        """Remove and return the message at ``idx``, shifting the shorter side by one.

        Raises:
            CorruptDataError: The message is missing or unreadable: it is removed all the
                same, then core's ``removal_error`` of it. (Or, removing nothing, a message
                that must shift is missing: the shift could not keep it.)
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        op = change.id
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            n = meta.count
            i = idx + n if idx < 0 else idx
            if not 0 <= i < n:
                return None
            front = i <= n - 1 - i
            lo, hi = (0, i + 1) if front else (i, n)
            span = yield from self._span(meta, lo, hi)
            if span is not None:
                target = span[i - lo]
                moved = span[:-1] if front else span[1:]
                if None in moved:  # cannot shift a row that is not there
                    raise missing(meta, lo + span.index(None))
                [item] = self._found(meta, [target], i)
                first = meta.head + 1 if front else meta.head + i
                shifted: list[Action] = [
                    ("upsert", self._row(meta, meta.gen, first + j, payload_of(r)), None)
                    for j, r in enumerate(moved) if r
                ]  # fmt: skip
                if front:
                    new, dropped = meta.change(op, head=meta.head + 1), meta.head
                else:
                    new, dropped = meta.change(op, next=meta.next - 1), meta.next - 1
                actions = [self._meta_action(meta, new), *shifted]
                if target is not None or dropped != meta.head + i:  # a missing row: no delete
                    actions.append(self._delete(meta, dropped))
                after = yield from self._commit_or_rewrite(meta, new, actions, change, i, None)
                if after is not None:
                    yield from self._finish_removal(after)
                    [message] = taken([item], self.table)
                    return message
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention deleting from key {key!r}")

    def insert_at(self, key: str, idx: int, payload: dict[str, Any], change: Change) -> Plan[None]:
        op = change.id
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            n = meta.count
            p = max(0, n + idx) if idx < 0 else min(idx, n)
            # Even at the end, the insert commits on the meta read here: handed to append
            # (which reads the meta again), an insert at 0 of an empty conversation would
            # land after messages appended meanwhile.
            if n == 0:
                yield from self._list_key(meta)
            if p <= n - p:
                rows = yield from self._rows_at(meta, 0, p)
                moved = [("upsert", self._row(meta, meta.gen, meta.head - 1 + j, payload_of(r)),
                          None) for j, r in enumerate(rows or [])]  # fmt: skip
                added = ("upsert", self._row(meta, meta.gen, meta.head - 1 + p, payload), None)
                new = meta.change(op, head=meta.head - 1)
            else:
                rows = yield from self._rows_at(meta, p, n)
                moved = [("upsert", self._row(meta, meta.gen, meta.head + p + 1 + j, payload_of(r)),
                          None) for j, r in enumerate(rows or [])]  # fmt: skip
                added = ("upsert", self._row(meta, meta.gen, meta.head + p, payload), None)
                new = meta.change(op, next=meta.next + 1)
            actions = [self._meta_action(meta, new), *moved, added]
            if rows is not None and (
                yield from self._commit_or_rewrite(meta, new, actions, change, p, payload)
            ):
                return
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention inserting into key {key!r}")

    def _commit_or_rewrite(
        self,
        meta: Meta,
        new: Meta,
        actions: list[Action],
        change: Change,
        position: int,
        insert: dict[str, Any] | None,
    ) -> Plan[Meta | None]:
        """Commit a shift in one transaction, or rewrite the conversation when it is too big.

        ``insert`` None: remove ``position``; else insert ``insert`` at ``position``.
        Returns the meta written, or None when ``meta`` had changed (nothing done).
        """
        if fits(actions):
            try:
                return (yield from self._commit(meta, new, actions, change))
            except ConflictError:
                return None
        span = yield from self._span(meta, 0, meta.count)
        if span is None:
            return None
        kept = [(p, r) for p, r in enumerate(span) if insert is not None or p != position]
        holes = [p for p, r in kept if r is None]
        if holes:  # a rewrite cannot keep a row that is not there
            raise missing(meta, holes[0])
        payloads = [payload_of(r) for _, r in kept if r is not None]
        if insert is not None:
            payloads.insert(position, insert)
        rewritten, rewrite = self._rewrite(meta, payloads, change.id)
        return (yield from self._replace(meta, rewritten, rewrite, change))

    def pop_last(self, key: str, change: Change) -> Plan[ChatMessage | None]:
        """Remove and return the last message.

        Raises:
            CorruptDataError: It is missing or unreadable: it is removed all the same (in
                the transaction that moves the meta entity), then core's ``removal_error``.
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        op = change.id
        seen = self._seen.get(key)
        for attempt in range(_MAX_ATTEMPTS):
            meta, row = None, None
            if seen is not None:
                meta, row = yield from self._last_row(seen)
                seen = None
            if meta is None:
                meta = yield from self.read_meta(key)
            if meta.count == 0:
                return None
            span: list[Row | None] | None = [row]
            if row is None:
                span = yield from self._span(meta, meta.count - 1, meta.count)
            if span is not None:
                [item] = self._found(meta, span, meta.count - 1)
                new = meta.change(op, next=meta.next - 1)
                actions = [self._meta_action(meta, new)]
                if span[0] is not None:  # a missing row: only the meta entity moves
                    actions.append(self._delete(meta, meta.next - 1))
                try:
                    after: Meta | None = yield from self._commit(meta, new, actions, change)
                except ConflictError:
                    after = None
                if after is not None:
                    yield from self._finish_removal(after)
                    [message] = taken([item], self.table)
                    return message
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention popping from key {key!r}")

    def delete_oldest(
        self, key: str, n: int, change: Change, tool_safe: bool = False
    ) -> Plan[list[ChatMessage]]:
        """Remove and return the first ``n`` messages.

        ``tool_safe``: also the tool results that would lead what is left (read at the meta
        entity the removal's commit is conditional on).

        Raises:
            CorruptDataError: One is missing or unreadable: they are removed all the same,
                then core's ``removal_error`` of the first such position.
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        op = change.id
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            m = min(max(n, 0), meta.count)
            if m == 0:
                return []
            if tool_safe:
                m = yield from safe_trim_plan(self._reader(meta), m, meta.count, _tool_result)
            span = yield from self._span(meta, 0, m)
            if span is not None:
                items = self._found(meta, span, 0)
                rows = [row for row in span if row is not None]
                new = meta.change(op, head=meta.head + m)
                # Each row If-Match the ETag read: after the meta moves on, an insert at the
                # front may reuse a RowKey, and that message must stay.
                deletes: list[Action] = [
                    ("delete", {"PartitionKey": meta.pk, "RowKey": r.props["RowKey"]}, r.etag)
                    for r in rows
                ]
                actions = [self._meta_action(meta, new), *deletes]
                one = fits(actions)
                try:
                    if one:
                        after: Meta | None = yield from self._commit(meta, new, actions, change)
                    else:
                        after = yield from self._put_meta(meta, new, change)
                except ConflictError:
                    after = None
                if after is not None:
                    if not one:
                        yield from self._delete_rows(meta.pk, deletes)
                    yield from self._finish_removal(after)
                    return taken(items, self.table)
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention deleting from key {key!r}")

    def _reader(self, meta: Meta) -> Callable[[int, int], Plan[list[Row | None]]]:
        """Read positions ``[lo, hi)`` as ``meta`` names them ([] once it changed)."""

        def read(lo: int, hi: int) -> Plan[list[Row | None]]:
            return (yield from self._span(meta, lo, hi)) or []

        return read

    def _delete_rows(self, pk: str, deletes: list[Action]) -> Plan[None]:
        """Delete rows the meta entity no longer names; one that changed (reused) stays."""
        for chunk in chunks(deletes):
            try:
                yield Batch(self.table, chunk)
            except ConflictError:
                for _, entity, etag in chunk:
                    with contextlib.suppress(ConflictError):
                        yield Remove(self.table, pk, entity["RowKey"], etag=etag)

    def clear(self) -> Plan[None]:
        """Delete every entity of the store's table, a page at a time."""
        self._seen.clear()
        while True:
            rows, _ = yield Query(self.table, "PartitionKey ne @none", {"none": ""},
                                  select=("PartitionKey", "RowKey"), page_size=PAGE)  # fmt: skip
            if not rows:
                return
            # The meta entity goes first: a reader never finds it naming rows already gone
            # (which would read as corrupt data rather than as a change).
            metas = {r.props["PartitionKey"] for r in rows if r.props["RowKey"] == META}
            partitions = {r.props["PartitionKey"] for r in rows}
            for pk in partitions - metas - {KEYS_PARTITION, ORDER_PARTITION}:
                yield Remove(self.table, pk, META)  # on a later page
            rows.sort(key=lambda r: r.props["RowKey"] != META)
            yield from delete_rows(self.table, rows)
