"""The native layout's changes: appends, inserts, replaces and removals, as plans.

The layout itself (the meta entity, generations, the keys partition, the record of
operation ids) is described in :mod:`._native`, which also holds the reads and the
building blocks (conditional commits, rewrites, unlisting) these plans are made of.
A change is planned on the meta entity as read (or as remembered): one that loses the
race to another writer starts over (:mod:`._record`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.storage.chat_store.azure._codec import (
    BATCH_MAX_OPS,
    Action,
    chunks,
    encode_key,
    fits,
    is_tool_result_payload,
)
from llama_index.storage.chat_store.azure._native import (
    KEYS_PARTITION,
    META,
    ORDER_PARTITION,
    Meta,
    NativeTable,
    missing,
    new_gen,
    payload_of,
)
from llama_index.storage.chat_store.azure._record import RACE, raced
from llama_index.storage.chat_store.azure._sdk import (
    IN_RANGE,
    PAGE,
    Batch,
    Query,
    Remove,
    Row,
    delete_rows,
    write_all,
)
from llama_index.storage.chat_store.core import ChatMessage, CorruptDataError
from llama_index.storage.chat_store.core.backend import Change, ConflictError, Plan, removal_error
from llama_index.storage.chat_store.core.tools import safe_trim_plan

__all__ = ["NativeLayout"]


class NativeLayout(NativeTable):
    """Plans for every store operation in the native layout."""

    def _delete_generation(self, pk: str, gen: str) -> Plan[None]:
        """Delete every row of a generation (invisible rows: order and atomicity don't matter)."""
        params = {"pk": pk, "lo": f"{gen}:", "hi": f"{gen};"}
        while rows := (yield Query(self.table, IN_RANGE, params, select=("PartitionKey", "RowKey"),
                                   page_size=BATCH_MAX_OPS))[0]:  # fmt: skip
            yield from delete_rows(self.table, rows)

    def _rewrite(
        self, meta: Meta, payloads: Sequence[dict[str, Any]], op: str
    ) -> tuple[Meta, list[Action]]:
        """Return the meta and the operations making ``payloads`` the whole conversation.

        The operations are the meta flip, the rows of a new generation, then the deletes of
        the visible rows of ``meta``.
        """
        new = meta.change(op, gen=new_gen(), head=0, next=len(payloads))
        rows = [self._upsert(meta, i, p, new.gen) for i, p in enumerate(payloads)]
        drops = [self._delete(meta, s) for s in range(meta.head, meta.next)]
        return new, [self._meta_action(meta, new), *rows, *drops]

    def _replace(
        self, meta: Meta, new: Meta, actions: list[Action], change: Change, *, staged: bool = False
    ) -> Plan[Meta]:
        """Commit a :meth:`_rewrite`; return the new meta.

        One transaction when it fits (and not ``staged``); else the new rows first, then the
        conditional flip, then the old generation's deletion (nothing visible changes when
        the flip fails). The staged way never names an old row, so it also replaces a
        conversation whose rows are missing.

        Raises:
            ConflictError: ``meta`` had changed (nothing visible changed).
        """
        if fits(actions) and not staged:
            return (yield from self._commit(meta, new, actions, change))
        rows = [a for a in actions[1:] if a[0] == "upsert"]
        for chunk in chunks(rows):
            yield Batch(self.table, chunk)
        try:
            # A flip resent after a lost reply that fails its condition on its own commit
            # is told apart by the record: then the new generation is the conversation.
            committed = yield from self._commit(meta, new, actions, change, alone=True)
        except ConflictError:
            yield from self._delete_generation(meta.pk, new.gen)
            raise
        if meta.etag is not None:
            yield from self._delete_generation(meta.pk, meta.gen)
        return committed

    def _empty(self, meta: Meta, rows: Sequence[Row], change: Change) -> Plan[Meta]:
        """Remove every visible message (``rows``, read at ``meta``); return the new meta.

        Only rows that exist are deleted, so a conversation missing some is removed all
        the same.

        Raises:
            ConflictError: The meta entity changed since ``meta`` (and not by this call's
                own commit, its reply lost).
        """
        new = meta.change(change.id, gen=new_gen(), head=0, next=0)
        actions = [self._meta_action(meta, new)]
        actions += [("delete", {"PartitionKey": meta.pk, "RowKey": r.props["RowKey"]}, None)
                    for r in rows]  # fmt: skip
        one = fits(actions)
        committed = yield from self._commit(meta, new, actions, change, alone=not one)
        if not one:
            yield from self._delete_generation(meta.pk, meta.gen)
        return committed

    def append(self, key: str, payloads: Sequence[dict[str, Any]], change: Change) -> Plan[None]:
        planned = self._seen.get(key)  # the remembered meta, planned on unread (see _native)
        unread = planned is not None

        def attempt() -> Plan[None]:
            nonlocal planned, unread
            meta, planned = planned or (yield from self.read_meta(key)), None
            while True:
                if meta.count == 0:
                    yield from self._list_key(meta)
                new = meta.change(change.id, next=meta.next + len(payloads))
                rows = [self._upsert(meta, meta.next + i, p) for i, p in enumerate(payloads)]
                actions = [self._meta_action(meta, new), *rows]
                if fits(actions):
                    try:
                        yield from self._commit(meta, new, actions, change)
                        return
                    except ConflictError:
                        meta = yield from self.read_meta(key)
                        if not unread:
                            raise
                elif unread:  # a rewrite costs too much to risk on a stale meta
                    meta = yield from self.read_meta(key)
                else:
                    old = [payload_of(r) for r in (yield from self._rows_at(meta, 0, meta.count))]
                    new, rewrite = self._rewrite(meta, [*old, *payloads], change.id)
                    yield from self._replace(meta, new, rewrite, change)
                    return
                unread = False  # the remembered meta was stale: one retry on the fresh read

        yield from RACE.run(key, self._storage, attempt)

    def replace(self, key: str, payloads: Sequence[dict[str, Any]], change: Change) -> Plan[None]:
        if not payloads:
            yield from self.delete_all(key, change, read=False)
            return
        planned = self._seen.get(key)  # the remembered meta, planned on unread (see _native)
        unread, staged = planned is not None, False

        def attempt() -> Plan[None]:
            nonlocal planned, unread, staged
            meta, planned = planned or (yield from self.read_meta(key)), None
            while True:
                new, actions = self._rewrite(meta, payloads, change.id)
                if unread and not fits(actions):  # staging costs too much to risk on a stale meta
                    meta, unread = (yield from self.read_meta(key)), False
                    continue
                if meta.count == 0:
                    yield from self._list_key(meta)
                try:
                    yield from self._replace(meta, new, actions, change, staged=staged)
                    return
                except ConflictError:
                    fresh = yield from self.read_meta(key)
                    if fresh.etag == meta.etag and not staged:
                        # The meta entity held, so a row delete failed: rows it names are
                        # missing. Staging never names old rows, and replacing corrupt data
                        # must work.
                        staged = True
                    elif unread:  # the remembered meta was stale: one retry on the fresh read
                        meta, unread = fresh, False
                    else:
                        raise

        yield from RACE.run(key, self._storage, attempt)

    @raced
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
        items = self._found(meta, span, 0) if read else []  # before removing anything
        emptied = yield from self._empty(meta, [r for r in span if r is not None], change)
        messages = yield from self._removed(emptied, items)
        return messages if read else None

    def _purge(self, key: str) -> Plan[None]:
        """Delete every entity of a conversation whose meta entity is unreadable."""
        pk = encode_key(key)
        while rows := (yield Query(self.table, "PartitionKey eq @pk", {"pk": pk},
                                   select=("PartitionKey", "RowKey"),
                                   page_size=BATCH_MAX_OPS))[0]:  # fmt: skip
            for row in rows:
                yield Remove(self.table, pk, row.props["RowKey"])
        self._seen.discard(key)
        yield from self._drop_listing(key, pk)

    @raced
    def delete_at(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        """Remove and return the message at ``idx``, shifting the shorter side by one.

        Raises:
            CorruptDataError: The message is missing or unreadable: it is removed all the
                same, then core's ``removal_error`` of it. (Or, removing nothing, a message
                that must shift is missing: the shift could not keep it.)
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        meta = yield from self.read_meta(key)
        n = meta.count
        i = idx + n if idx < 0 else idx
        if not 0 <= i < n:
            return None
        front = i <= n - 1 - i
        lo, hi = (0, i + 1) if front else (i, n)
        span = yield from self._span(meta, lo, hi)
        target = span[i - lo]
        moved = span[:-1] if front else span[1:]
        if None in moved:  # cannot shift a row that is not there
            raise missing(meta, lo + span.index(None))
        item = self._found(meta, [target], i)  # before removing anything
        first = meta.head + 1 if front else meta.head + i
        shifted = [self._upsert(meta, first + j, payload_of(r))
                   for j, r in enumerate(moved) if r]  # fmt: skip
        if front:
            new, dropped = meta.change(change.id, head=meta.head + 1), meta.head
        else:
            new, dropped = meta.change(change.id, next=meta.next - 1), meta.next - 1
        actions = [self._meta_action(meta, new), *shifted]
        if target is not None or dropped != meta.head + i:  # a missing row: no delete
            actions.append(self._delete(meta, dropped))
        after = yield from self._commit_or_rewrite(meta, new, actions, change, i, None)
        [message] = yield from self._removed(after, item)
        return message

    @raced
    def insert_at(self, key: str, idx: int, payload: dict[str, Any], change: Change) -> Plan[None]:
        meta = yield from self.read_meta(key)
        n = meta.count
        p = max(0, n + idx) if idx < 0 else min(idx, n)
        # Even at the end, the insert commits on the meta read here: handed to append
        # (which reads the meta again), an insert at 0 of an empty conversation would
        # land after messages appended meanwhile.
        if n == 0:
            yield from self._list_key(meta)
        if p <= n - p:  # the front moves down one
            rows = yield from self._rows_at(meta, 0, p)
            first, new = meta.head - 1, meta.change(change.id, head=meta.head - 1)
            at = first + p
        else:  # the back moves up one
            rows = yield from self._rows_at(meta, p, n)
            first, new = meta.head + p + 1, meta.change(change.id, next=meta.next + 1)
            at = meta.head + p
        moved = [self._upsert(meta, first + j, payload_of(r)) for j, r in enumerate(rows)]
        actions = [self._meta_action(meta, new), *moved, self._upsert(meta, at, payload)]
        yield from self._commit_or_rewrite(meta, new, actions, change, p, payload)

    def _commit_or_rewrite(
        self,
        meta: Meta,
        new: Meta,
        actions: list[Action],
        change: Change,
        position: int,
        insert: dict[str, Any] | None,
    ) -> Plan[Meta]:
        """Commit a shift in one transaction, or rewrite the conversation when it is too big.

        ``insert`` None: remove ``position``; else insert ``insert`` at ``position``.
        Returns the meta written.

        Raises:
            ConflictError: ``meta`` had changed (nothing done).
        """
        if fits(actions):
            return (yield from self._commit(meta, new, actions, change))
        span = yield from self._span(meta, 0, meta.count)
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
        seen = self._seen.get(key)

        def attempt() -> Plan[ChatMessage | None]:
            nonlocal seen
            meta, row = None, None
            if seen is not None:
                (meta, row), seen = (yield from self._last_row(seen)), None
            if meta is None:
                meta = yield from self.read_meta(key)
            if meta.count == 0:
                return None
            last = meta.count - 1
            span = [row] if row is not None else (yield from self._span(meta, last, last + 1))
            items = self._found(meta, span, last)  # before removing anything
            new = meta.change(change.id, next=meta.next - 1)
            actions = [self._meta_action(meta, new)]
            if span[0] is not None:  # a missing row: only the meta entity moves
                actions.append(self._delete(meta, meta.next - 1))
            after = yield from self._commit(meta, new, actions, change)
            [message] = yield from self._removed(after, items)
            return message

        return (yield from RACE.run(key, self._storage, attempt))

    @raced
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
        meta = yield from self.read_meta(key)
        m = min(max(n, 0), meta.count)
        if m == 0:
            return []
        if tool_safe:
            read = lambda lo, hi: self._span(meta, lo, hi)  # noqa: E731
            is_result = lambda row: row is not None and is_tool_result_payload(row.props)  # noqa: E731
            m = yield from safe_trim_plan(read, m, meta.count, is_result)
        span = yield from self._span(meta, 0, m)
        items = self._found(meta, span, 0)  # before removing anything
        new = meta.change(change.id, head=meta.head + m)
        # Each row If-Match the ETag read: after the meta moves on, an insert at the
        # front may reuse a RowKey, and that message must stay.
        deletes: list[Action] = [
            ("delete", {"PartitionKey": meta.pk, "RowKey": r.props["RowKey"]}, r.etag)
            for r in span if r is not None
        ]  # fmt: skip
        actions = [self._meta_action(meta, new), *deletes]
        one = fits(actions)
        after = yield from self._commit(meta, new, actions, change, alone=not one)
        if not one:
            yield from write_all(self.table, deletes)  # a row that changed (reused) stays
        return (yield from self._removed(after, items))

    def clear(self) -> Plan[None]:
        """Delete every entity of the store's table, a page at a time."""
        self._seen.clear()
        while rows := (yield Query(self.table, "PartitionKey ne @none", {"none": ""},
                                   select=("PartitionKey", "RowKey"),
                                   page_size=PAGE))[0]:  # fmt: skip
            # The meta entity goes first: a reader never finds it naming rows already gone
            # (which would read as corrupt data rather than as a change).
            metas = {r.props["PartitionKey"] for r in rows if r.props["RowKey"] == META}
            partitions = {r.props["PartitionKey"] for r in rows}
            for pk in partitions - metas - {KEYS_PARTITION, ORDER_PARTITION}:
                yield Remove(self.table, pk, META)  # on a later page
            rows.sort(key=lambda r: r.props["RowKey"] != META)
            yield from delete_rows(self.table, rows)
