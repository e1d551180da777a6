"""LlamaIndex's layout's changes: appends, inserts, replaces and removals, as plans.

The layout, the record of changes on the last chat row and the two-phase emptying are
described in :mod:`._llama_index_layout`, which also holds the reads and the building
blocks (the recorded commit, the emptying, the metadata refresh) these plans are made of.
Changes are planned on the rows as read; one that loses a race to another writer
starts over (:mod:`._record`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.storage.chat_store.azure._codec import (
    Action,
    chunks,
    encode_key,
    fits,
    is_llama_index_tool_result,
    taken,
)
from llama_index.storage.chat_store.azure._llama_index_layout import (
    RECORD,
    LlamaIndexTable,
    _deletes,
    _found,
    _index,
    _kept,
    _moving,
    _payload,
    _record_on,
    _row_key,
    _settle,
    _taking,
)
from llama_index.storage.chat_store.azure._record import RACE, Record, raced
from llama_index.storage.chat_store.azure._sdk import (
    Batch,
    Get,
    Query,
    Row,
    write_all,
)
from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.core.backend import Change, ConflictError, Plan
from llama_index.storage.chat_store.core.tools import safe_trim_count

__all__ = ["LlamaIndexLayout"]


class LlamaIndexLayout(LlamaIndexTable):
    """Plans for every store operation in LlamaIndex's two-table layout."""

    def _last_row(self, key: str) -> Plan[tuple[Row | None, Row | None]]:
        """The metadata entity and the conversation's last chat row (None when absent).

        The metadata's count is only a hint where to look (it trails the rows): the rows
        from the hinted last one on are read, and all of them when none is there.
        """
        meta = yield Get(self.meta_table, self.partition, encode_key(key))
        count = meta.props.get("MessageCount") if meta is not None else None
        if isinstance(count, int) and count > 0:
            rows = yield from self._rows(key, keys_only=True, start=_row_key(count - 1))
            if rows:
                return meta, rows[-1]
        rows = yield from self._rows(key, keys_only=True)
        return meta, rows[-1] if rows else None

    def _after(
        self, key: str, last: Row | None, payloads: Sequence[dict[str, Any]]
    ) -> list[Action]:
        """Create ``payloads`` after ``last``, which must stay the last row until then.

        ``last`` is touched If-Match its ETag in the same transaction (its record cleared):
        a removal or an insert that changed it since makes the append fail (and retry),
        and, the other way round, a removal planned on ``last`` fails once the append
        committed, so no removal ever takes a row that stopped being the last. The caller
        puts the record on the last row created.
        """
        pk = encode_key(key)
        start = _index(last, key) + 1 if last is not None else 0
        actions: list[Action] = [
            ("create", {"PartitionKey": pk, "RowKey": _row_key(start + i), **p}, None)
            for i, p in enumerate(payloads)
        ]
        if last is not None:
            touch = {"PartitionKey": pk, "RowKey": last.props["RowKey"]}
            if last.props.get(RECORD):
                touch[RECORD] = ""
            actions.insert(0, ("touch", touch, last.etag))
        return actions

    def append(self, key: str, payloads: Sequence[dict[str, Any]], change: Change) -> Plan[None]:
        done, part = 0, 0

        def attempt() -> Plan[None]:
            nonlocal done, part
            meta, last = yield from self._last_row(key)
            if last is None:  # nothing to be conditional on: the metadata entity first
                meta = yield from self._claim(key, meta)
            # Over one transaction an append is not atomic: each further transaction
            # continues after (and touches) the last row the previous one created, and
            # records a part id of its own.
            while done < len(payloads):
                planned, step = _record_on(last), f"{change.id}.{part}" if part else change.id
                actions = self._after(key, last, payloads[done:])
                if not fits(actions):
                    actions = chunks(actions)[0]
                actions[-1] = self._carry(actions[-1], planned.add(step))
                claim = meta if last is None else None
                etags = yield from self._commit(key, actions, planned, change, step, claim)
                done, part = done + sum(1 for a in actions if a[0] == "create"), part + 1
                last = Row(actions[-1][1], etags[-1] if etags else "")
                if not etags and done < len(payloads):  # committed, its ETag lost with the reply
                    _, last = yield from self._last_row(key)
            assert last is not None
            yield from self._raise_meta(key, meta, last)

        yield from RACE.run(key, self._storage, attempt)

    @raced
    def replace(self, key: str, payloads: Sequence[dict[str, Any]], change: Change) -> Plan[None]:
        if not payloads:
            yield from self.delete_all(key, change, read=False)
            return
        pk = encode_key(key)
        rows = yield from self._rows(key, keys_only=True)
        etags = {r.props["RowKey"]: r.etag for r in rows}
        claim = None if rows else (yield from self._claim_empty(key))
        keep = [_row_key(i) for i in range(len(payloads))]
        # Conditional on every row read (rows kept are replaced If-Match, new ones
        # created), so a change made meanwhile, an append included, is never overwritten.
        actions: list[Action] = [
            ("update", {"PartitionKey": pk, "RowKey": rk, **p}, etags[rk])
            if rk in etags else ("create", {"PartitionKey": pk, "RowKey": rk, **p}, None)
            for rk, p in zip(keep, payloads, strict=True)
        ]  # fmt: skip
        planned = _record_on(rows[-1] if rows else None)
        actions[-1] = self._carry(actions[-1], planned.add(change.id))
        actions += [("delete", {"PartitionKey": pk, "RowKey": rk}, etag)
                    for rk, etag in etags.items() if rk not in set(keep)]  # fmt: skip
        if fits(actions):
            yield from self._commit(key, actions, planned, change, claim=claim)
        else:  # several transactions: not atomic, last writer wins, a new chain
            actions[len(payloads) - 1] = self._carry(actions[len(payloads) - 1],
                                                     Record.new().add(change.id))  # fmt: skip
            # One by one where a transaction fails: a row to delete is gone already (a
            # resend, or another writer).
            yield from write_all(self.table, [(v if v != "update" else "upsert", e, None)
                                              for v, e, _ in actions])  # fmt: skip
        yield from self._refresh_meta(key)

    @raced
    def delete_all(
        self, key: str, change: Change, *, read: bool = True
    ) -> Plan[list[ChatMessage] | None]:
        """Remove the conversation; return its messages (None if there were none).

        ``read=False``: without reading the messages (works on corrupt data; returns None).

        Raises:
            CorruptDataError: A row is not a message: the rows are removed all the same
                (in one transaction when they fit), then core's ``removal_error`` of it.
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        rows = yield from self._rows(key, keys_only=not read)
        if not rows:
            if read:
                yield from self._refresh_meta(key)
            return None
        items = _found(key, rows, 0) if read else []  # before removing anything
        removed = yield from self._empty_rows(key, rows, change)
        return (taken(_kept(rows, items, removed), self.table) or None) if read else None

    @raced
    def pop_last(self, key: str, change: Change) -> Plan[ChatMessage | None]:
        """Remove and return the last message.

        Raises:
            CorruptDataError: It is not a message: it is removed all the same, then core's
                ``removal_error`` of it.
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        pk = encode_key(key)
        keys = yield from self._rows(key, keys_only=True)
        if not keys:
            return None
        # The row with its ETag, and proof that it is still the last: an append or an
        # insert that added a row after it also changed it, in one transaction (see
        # _after), so either this range read sees the new row, or the delete If-Match
        # the ETag read here fails.
        where, last = "PartitionKey eq @pk and RowKey ge @lo", keys[-1].props["RowKey"]
        rows, _ = yield Query(self.table, where, {"pk": pk, "lo": last}, page_size=2)
        if len(rows) != 1 or rows[0].props["RowKey"] != last:
            raise ConflictError(f"the last row of key {key!r} changed")
        items = _found(key, rows, len(keys) - 1)
        if len(keys) == 1:
            yield from self._empty_rows(key, rows, change)
        else:  # the row before takes the record, If-Match: it becomes the last
            planned, before = _record_on(rows[0]), keys[-2]
            actions = [*_deletes(pk, rows), _taking(pk, before, planned.add(change.id))]
            yield from self._commit(key, actions, planned, change)
            yield from self._refresh_meta(key)
        [message] = taken(items, self.table)
        return message

    @raced
    def delete_oldest(
        self, key: str, n: int, change: Change, tool_safe: bool = False
    ) -> Plan[list[ChatMessage]]:
        """Remove and return the first ``n`` messages.

        ``tool_safe``: also the tool results that would lead what is left (the removal is
        conditional on the last row, which every change after them changes too).

        Raises:
            CorruptDataError: One is not a message: they are removed all the same, then
                core's ``removal_error`` of the first such position.
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        pk = encode_key(key)
        rows = yield from self._rows(key)
        is_result = lambda row: is_llama_index_tool_result(row.props)  # noqa: E731
        m = safe_trim_count(rows, n, is_result) if tool_safe else n
        first = rows[: max(m, 0)]
        if not first:
            return []
        items = _found(key, first, 0)  # before removing anything
        if len(first) == len(rows):
            removed = yield from self._empty_rows(key, rows, change)
        else:  # the last row takes the record, If-Match: no append slips in between
            planned, last = _record_on(rows[-1]), rows[-1]
            actions = [*_deletes(pk, first), _taking(pk, last, planned.add(change.id))]
            removed = yield from self._remove(key, first, actions, planned, change)
            yield from self._refresh_meta(key)
        return taken(_kept(first, items, removed), self.table)

    def _shift(
        self, key: str, moves: list[Action], planned: Record, change: Change, claim: Row | None
    ) -> Plan[None]:
        """Run shifting writes (conditional on the rows' ETags), then refresh the metadata.

        ``claim``: the conversation was empty (see :meth:`_commit`).

        Raises:
            ConflictError: A row changed meanwhile.
        """
        if fits(moves):
            yield from self._commit(key, moves, planned, change, claim=claim)
        else:
            change.check = False
            try:
                for chunk in chunks(moves):
                    yield Batch(self.table, chunk)
            except ConflictError as conflict:
                _settle(key, change, conflict)
                raise
        yield from self._refresh_meta(key)

    @raced
    def delete_at(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        """Remove and return the message at ``idx``; the later rows move down one.

        Raises:
            CorruptDataError: It is not a message: it is removed all the same (with the
                moves, in one transaction when they fit), then core's ``removal_error``.
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        pk = encode_key(key)
        rows = yield from self._rows(key)
        n = len(rows)
        i = idx + n if idx < 0 else idx
        if not 0 <= i < n:
            return None
        items = _found(key, [rows[i]], i)
        if n == 1:
            yield from self._empty_rows(key, rows, change)
        else:
            # Keep RowKeys contiguous (LlamaIndex appends at MessageCount): move each
            # later message one row down, then drop the last row; all conditional on
            # ETags. The row before the last takes the record.
            planned = _record_on(rows[-1])
            moves = [_moving(pk, rows[j], _payload(rows[j + 1])) for j in range(i, n - 1)]
            if moves:
                moves[-1] = self._carry(moves[-1], planned.add(change.id))
            else:  # the last one itself: the row before only takes the record
                moves.append(_taking(pk, rows[-2], planned.add(change.id)))
            moves += _deletes(pk, rows[-1:])
            yield from self._shift(key, moves, planned, change, None)
        [message] = taken(items, self.table)
        return message

    @raced
    def insert_at(self, key: str, idx: int, payload: dict[str, Any], change: Change) -> Plan[None]:
        pk = encode_key(key)
        rows = yield from self._rows(key)
        n = len(rows)
        p = max(0, n + idx) if idx < 0 else min(idx, n)
        planned = _record_on(rows[-1] if rows else None)
        claim = None if rows else (yield from self._claim_empty(key))
        if p == n:  # on the rows read: handed to append, it would miss an append meanwhile
            moves = self._after(key, rows[-1] if rows else None, [payload])
            moves[-1] = self._carry(moves[-1], planned.add(change.id))
        else:
            tail = _row_key(_index(rows[-1], key) + 1)
            moved = {"PartitionKey": pk, "RowKey": tail, **_payload(rows[-1])}
            moves = [self._carry(("create", moved, None), planned.add(change.id))]
            moves += [_moving(pk, rows[j], _payload(rows[j - 1])) for j in range(p + 1, n)]
            moves.append(_moving(pk, rows[p], payload))
        yield from self._shift(key, moves, planned, change, claim)
