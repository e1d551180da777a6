"""The native layout: one entity per message, a meta entity per conversation, a keys partition.

In the store's table:

* PartitionKey = the encoded conversation key (:func:`encode_key`).
* Message rows: RowKey ``<gen>:<seq + 10**18, 19 digits>``; properties from
  :func:`encode_payload`. Only rows of the meta entity's generation with
  ``Head <= seq < Next`` are visible, so positions map to RowKeys without reading the
  partition (windows and counts never scan it).
* The meta entity (RowKey ``meta``): ``Key``, ``Gen``, ``Head``, ``Next``, ``Op``. Every
  change is one entity-group transaction updating it If-Match its ETag together with the
  message rows, retried on 409/412; ``Op`` (a random id per call) tells a retry whether
  a lost reply had in fact committed.
* Changes larger than one transaction (100 operations, 4 MiB) write the new messages
  under a fresh generation first, then flip ``Gen`` with one conditional write, then
  delete the old generation: readers see the old or the new conversation, never a mix.
* The keys partition ``%keys`` (never produced by :func:`encode_key`) lists the
  conversations with messages; one entity per key, written before the first message
  commits and removed after the last one goes, then re-checked against the meta entity.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from azure.data.tables import EdmType, EntityProperty
from llama_index.storage.chat_store.azure._codec import (
    BATCH_MAX_OPS,
    decode_key,
    decode_payload,
    encode_key,
)
from llama_index.storage.chat_store.azure._io import (
    Action,
    Batch,
    ConflictError,
    Get,
    Plan,
    Put,
    Query,
    Remove,
    Row,
    backoff,
    chunks,
    fits,
)
from llama_index.storage.chat_store.core import ChatMessage, ChatStoreError, CorruptDataError

__all__ = ["KEYS_PARTITION", "NativeLayout"]

META = "meta"
KEYS_PARTITION = "%keys"
_SEQ_OFFSET = 10**18
_MAX_ATTEMPTS = 200
_PAGE = 1000


def _new_gen() -> str:
    # Random, so a conversation recreated while old rows are still being deleted, or a
    # staged generation abandoned by a crashed writer, never collides with live rows.
    return secrets.token_hex(6)


def _op_id() -> str:
    return secrets.token_hex(8)


def _int64(value: int) -> EntityProperty:
    return EntityProperty(value, EdmType.INT64)


@dataclass(frozen=True)
class Meta:
    """The state of one conversation (``etag`` None: no meta entity)."""

    key: str
    pk: str
    gen: str
    head: int
    next: int
    op: str
    etag: str | None

    @property
    def count(self) -> int:
        return self.next - self.head

    def row_key(self, seq: int) -> str:
        return f"{self.gen}:{seq + _SEQ_OFFSET:019d}"


class NativeLayout:
    """Plans (see :mod:`._io`) for every store operation in the native layout."""

    def __init__(self, table: str) -> None:
        self.table = table

    # -- reading ------------------------------------------------------------------------

    def read_meta(self, key: str) -> Plan[Meta]:
        pk = encode_key(key)
        row = yield Get(self.table, pk, META)
        if row is None:
            return Meta(key, pk, _new_gen(), 0, 0, "", None)
        props = row.props
        gen, head, nxt = props.get("Gen"), props.get("Head"), props.get("Next")
        if not (isinstance(gen, str) and isinstance(head, int) and isinstance(nxt, int)):
            raise CorruptDataError(f"the meta entity of key {key!r} is unreadable: {props!r}")
        if nxt < head or props.get("Key", key) != key:
            raise CorruptDataError(f"the meta entity of key {key!r} is inconsistent: {props!r}")
        return Meta(key, pk, gen, head, nxt, str(props.get("Op", "")), row.etag)

    def _rows(self, meta: Meta, lo: int, hi: int) -> Plan[list[Row]]:
        """Read the rows of positions ``[lo, hi)`` (fewer if they changed meanwhile)."""
        if hi <= lo:
            return []
        params = {
            "pk": meta.pk,
            "lo": meta.row_key(meta.head + lo),
            "hi": meta.row_key(meta.head + hi),
        }
        rows: list[Row] = []
        token = None
        while True:
            page, token = yield Query(
                self.table,
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                params,
                page_size=_PAGE,
                token=token,
            )
            rows.extend(page)
            if token is None:
                return rows

    def _stable_rows(
        self, key: str, lo: int | None, hi: int | None
    ) -> Plan[tuple[Meta, list[Row]]]:
        """Read meta then rows ``[lo, hi)`` (None: to the end), retrying if they disagree."""
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            start, stop = lo or 0, meta.count if hi is None else min(hi, meta.count)
            rows = yield from self._rows(meta, start, stop)
            if len(rows) == max(0, stop - start):
                return meta, rows
            yield backoff(attempt)
        raise ChatStoreError(f"key {key!r} changed during every read attempt")

    def get_messages(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            span = range(meta.count)[offset:]
            span = span if limit is None else span[:limit]
            if not span:
                return []
            rows = yield from self._rows(meta, span.start, span.stop)
            if len(rows) == len(span):
                return [
                    decode_payload(r.props, key=key, position=span.start + i)
                    for i, r in enumerate(rows)
                ]
            yield backoff(attempt)
        raise ChatStoreError(f"key {key!r} changed during every read attempt")

    def count_messages(self, key: str) -> Plan[int]:
        meta = yield from self.read_meta(key)
        return meta.count

    def keys_page(self, token: Any) -> Plan[tuple[list[str], Any]]:
        rows, token = yield Query(
            self.table,
            "PartitionKey eq @pk",
            {"pk": KEYS_PARTITION},
            select=("RowKey", "Key"),
            page_size=_PAGE,
            token=token,
        )
        return [decode_key(r.props["RowKey"], r.props.get("Key")) for r in rows], token

    # -- building blocks ----------------------------------------------------------------

    def _meta_entity(self, meta: Meta, gen: str, head: int, nxt: int, op: str) -> dict[str, Any]:
        return {
            "PartitionKey": meta.pk,
            "RowKey": META,
            "Key": meta.key,
            "Gen": gen,
            "Head": _int64(head),
            "Next": _int64(nxt),
            "Op": op,
        }

    def _meta_action(self, meta: Meta, gen: str, head: int, nxt: int, op: str) -> Action:
        entity = self._meta_entity(meta, gen, head, nxt, op)
        return ("create", entity, None) if meta.etag is None else ("update", entity, meta.etag)

    def _row(self, meta: Meta, gen: str, seq: int, payload: dict[str, Any]) -> dict[str, Any]:
        row_key = f"{gen}:{seq + _SEQ_OFFSET:019d}"
        return {"PartitionKey": meta.pk, "RowKey": row_key, **payload}

    def _delete(self, meta: Meta, seq: int) -> Action:
        return ("delete", {"PartitionKey": meta.pk, "RowKey": meta.row_key(seq)}, None)

    def _list_key(self, meta: Meta) -> Plan[None]:
        yield Put(self.table, {"PartitionKey": KEYS_PARTITION, "RowKey": meta.pk, "Key": meta.key})

    def _committed(self, key: str, op: str) -> Plan[bool]:
        """After a conflict: did our own write commit (its reply lost, the SDK retried)?"""
        meta = yield from self.read_meta(key)
        return meta.op == op

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
            actions = [("delete", {"PartitionKey": pk, "RowKey": r.props["RowKey"]}, None)
                       for r in rows]  # fmt: skip
            try:
                yield Batch(self.table, actions)
            except ConflictError:
                # Someone else deleted some of them: fall back to one by one (missing is fine).
                for _, entity, _ in actions:
                    yield Remove(self.table, pk, entity["RowKey"])

    def _unlist(self, meta: Meta, etag: str) -> Plan[None]:
        """Drop an emptied conversation from the keys partition, then its meta entity.

        The meta entity is deleted If-Match the ETag our emptying write returned. A writer
        that refilled the conversation meanwhile made that fail: then the key is listed
        again. A writer that read the empty meta before us fails its own conditional
        commit on the deleted meta and lists the key again when it retries.
        """
        yield Remove(self.table, KEYS_PARTITION, meta.pk)
        try:
            yield Remove(self.table, meta.pk, META, etag=etag)
        except ConflictError:
            again = yield from self.read_meta(meta.key)
            if again.count > 0:
                yield from self._list_key(again)

    def _replace(self, meta: Meta, payloads: Sequence[dict[str, Any]], op: str) -> Plan[str | None]:
        """Make ``payloads`` the whole conversation (meta as read); return the meta ETag.

        Returns None when the meta entity changed since it was read (nothing visible
        changed; the caller re-reads and retries).
        """
        gen = _new_gen()
        rows = [("upsert", self._row(meta, gen, i, p), None) for i, p in enumerate(payloads)]
        flip = self._meta_action(meta, gen, 0, len(payloads), op)
        drops = [self._delete(meta, s) for s in range(meta.head, meta.next)]
        if fits([flip, *rows, *drops]):
            try:
                etags = yield Batch(self.table, [flip, *rows, *drops])
            except ConflictError:
                return None
            return str(etags[0])
        for chunk in chunks(rows):
            yield Batch(self.table, chunk)
        try:
            etag = yield Put(self.table, flip[1], "create" if meta.etag is None else "update",
                             meta.etag)  # fmt: skip
        except ConflictError:
            yield from self._delete_generation(meta.pk, gen)
            return None
        if meta.etag is not None:
            yield from self._delete_generation(meta.pk, meta.gen)
        return str(etag)

    def _empty(self, meta: Meta, op: str) -> Plan[str | None]:
        """Remove every visible message (meta as read); return the new meta ETag or None."""
        flip = self._meta_action(meta, _new_gen(), 0, 0, op)
        drops = [self._delete(meta, s) for s in range(meta.head, meta.next)]
        if fits([flip, *drops]):
            try:
                etags = yield Batch(self.table, [flip, *drops])
            except ConflictError:
                return None
            return str(etags[0])
        try:
            etag = yield Put(self.table, flip[1], "update", meta.etag)
        except ConflictError:
            return None
        yield from self._delete_generation(meta.pk, meta.gen)
        return str(etag)

    # -- writing ------------------------------------------------------------------------

    def append(self, key: str, payloads: Sequence[dict[str, Any]]) -> Plan[None]:
        op = _op_id()
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            if meta.count == 0:
                yield from self._list_key(meta)
            gen = meta.gen
            rows = [("upsert", self._row(meta, gen, meta.next + i, p), None)
                    for i, p in enumerate(payloads)]  # fmt: skip
            actions = [self._meta_action(meta, gen, meta.head, meta.next + len(rows), op), *rows]
            if fits(actions):
                try:
                    yield Batch(self.table, actions)
                    return
                except ConflictError:
                    if (yield from self._committed(key, op)):
                        return
            else:
                existing = yield from self._rows(meta, 0, meta.count)
                if len(existing) == meta.count:
                    old = [_payload(r) for r in existing]
                    if (yield from self._replace(meta, [*old, *payloads], op)) is not None:
                        return
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention appending to key {key!r}")

    def replace(self, key: str, payloads: Sequence[dict[str, Any]]) -> Plan[None]:
        if not payloads:
            yield from self.delete_all(key, decode=False)
            return
        op = _op_id()
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            if meta.count == 0:
                yield from self._list_key(meta)
            if (yield from self._replace(meta, payloads, op)) is not None:
                return
            if (yield from self._committed(key, op)):
                return
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention replacing key {key!r}")

    def delete_all(self, key: str, *, decode: bool = True) -> Plan[list[ChatMessage] | None]:
        op = _op_id()
        for attempt in range(_MAX_ATTEMPTS):
            meta, rows = yield from self._stable_rows(key, None, None)
            if meta.count == 0:
                return None
            messages = [decode_payload(r.props, key=key, position=i)
                        for i, r in enumerate(rows)] if decode else []  # fmt: skip
            etag = yield from self._empty(meta, op)
            if etag is not None:
                yield from self._unlist(meta, etag)
                return messages
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention deleting key {key!r}")

    def delete_at(self, key: str, idx: int) -> Plan[ChatMessage | None]:
        op = _op_id()
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            n = meta.count
            i = idx + n if idx < 0 else idx
            if not 0 <= i < n:
                return None
            if n == 1:
                removed = yield from self.delete_all(key)
                return removed[0] if removed else None
            front, back = i, n - 1 - i
            if front <= back:
                rows = yield from self._rows(meta, 0, i + 1)
                target = rows[-1] if len(rows) == i + 1 else None
                shifted = [("upsert", self._row(meta, meta.gen, meta.head + j + 1, _payload(r)),
                            None) for j, r in enumerate(rows[:-1])]  # fmt: skip
                actions = [self._meta_action(meta, meta.gen, meta.head + 1, meta.next, op),
                           *shifted, self._delete(meta, meta.head)]  # fmt: skip
            else:
                rows = yield from self._rows(meta, i, n)
                target = rows[0] if len(rows) == n - i else None
                shifted = [("upsert", self._row(meta, meta.gen, meta.head + i + j, _payload(r)),
                            None) for j, r in enumerate(rows[1:])]  # fmt: skip
                actions = [self._meta_action(meta, meta.gen, meta.head, meta.next - 1, op),
                           *shifted, self._delete(meta, meta.next - 1)]  # fmt: skip
            if target is not None:
                message = decode_payload(target.props, key=key, position=i)
                done = yield from self._commit_or_rewrite(meta, actions, i, None, op)
                if done:
                    return message
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention deleting from key {key!r}")

    def insert_at(self, key: str, idx: int, payload: dict[str, Any]) -> Plan[None]:
        op = _op_id()
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            n = meta.count
            p = max(0, n + idx) if idx < 0 else min(idx, n)
            if p == n:
                yield from self.append(key, [payload])
                return
            if p <= n - p:
                rows = yield from self._rows(meta, 0, p)
                complete = len(rows) == p
                moved = [("upsert", self._row(meta, meta.gen, meta.head - 1 + j, _payload(r)),
                          None) for j, r in enumerate(rows)]  # fmt: skip
                new = ("upsert", self._row(meta, meta.gen, meta.head - 1 + p, payload), None)
                head, nxt = meta.head - 1, meta.next
            else:
                rows = yield from self._rows(meta, p, n)
                complete = len(rows) == n - p
                moved = [("upsert", self._row(meta, meta.gen, meta.head + p + 1 + j, _payload(r)),
                          None) for j, r in enumerate(rows)]  # fmt: skip
                new = ("upsert", self._row(meta, meta.gen, meta.head + p, payload), None)
                head, nxt = meta.head, meta.next + 1
            actions = [self._meta_action(meta, meta.gen, head, nxt, op), *moved, new]
            if complete and (yield from self._commit_or_rewrite(meta, actions, p, payload, op)):
                return
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention inserting into key {key!r}")

    def _commit_or_rewrite(
        self,
        meta: Meta,
        actions: list[Action],
        position: int,
        insert: dict[str, Any] | None,
        op: str,
    ) -> Plan[bool]:
        """Commit a shift in one transaction, or rewrite the conversation when it is too big.

        ``insert`` None: remove ``position``; else insert ``insert`` at ``position``.
        """
        if fits(actions):
            try:
                yield Batch(self.table, actions)
                return True
            except ConflictError:
                return (yield from self._committed(meta.key, op))
        rows = yield from self._rows(meta, 0, meta.count)
        if len(rows) != meta.count:
            return False
        payloads = [_payload(r) for r in rows]
        if insert is None:
            del payloads[position]
        else:
            payloads.insert(position, insert)
        return (yield from self._replace(meta, payloads, op)) is not None

    def pop_last(self, key: str) -> Plan[ChatMessage | None]:
        op = _op_id()
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            if meta.count == 0:
                return None
            if meta.count == 1:
                removed = yield from self.delete_all(key)
                return removed[-1] if removed else None
            row = yield Get(self.table, meta.pk, meta.row_key(meta.next - 1))
            if row is not None:
                message = decode_payload(row.props, key=key, position=meta.count - 1)
                actions = [self._meta_action(meta, meta.gen, meta.head, meta.next - 1, op),
                           self._delete(meta, meta.next - 1)]  # fmt: skip
                try:
                    yield Batch(self.table, actions)
                    return message
                except ConflictError:
                    if (yield from self._committed(key, op)):
                        return message
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention popping from key {key!r}")

    def delete_oldest(self, key: str, n: int) -> Plan[list[ChatMessage]]:
        op = _op_id()
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            m = min(max(n, 0), meta.count)
            if m == 0:
                return []
            if m == meta.count:
                removed = yield from self.delete_all(key)
                return removed or []
            rows = yield from self._rows(meta, 0, m)
            if len(rows) == m:
                messages = [decode_payload(r.props, key=key, position=i)
                            for i, r in enumerate(rows)]  # fmt: skip
                flip = self._meta_action(meta, meta.gen, meta.head + m, meta.next, op)
                drops = [self._delete(meta, meta.head + i) for i in range(m)]
                try:
                    if fits([flip, *drops]):
                        yield Batch(self.table, [flip, *drops])
                    else:
                        yield Put(self.table, flip[1], "update", meta.etag)
                        for chunk in chunks(drops):
                            yield Batch(self.table, chunk)
                    return messages
                except ConflictError:
                    if (yield from self._committed(key, op)):
                        return messages
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention deleting from key {key!r}")

    def clear_plans(self) -> list[Callable[[], Plan[bool]]]:
        """Plans to repeat until they return False, emptying the store's table."""
        return [self.clear_page]

    def clear_page(self) -> Plan[bool]:
        """Delete up to one page of the table's entities; return whether any were left."""
        rows, _ = yield Query(self.table, "PartitionKey ne @none", {"none": ""},
                              select=("PartitionKey", "RowKey"), page_size=_PAGE)  # fmt: skip
        by_partition: dict[str, list[Action]] = {}
        for row in rows:
            entity = {"PartitionKey": row.props["PartitionKey"], "RowKey": row.props["RowKey"]}
            by_partition.setdefault(entity["PartitionKey"], []).append(("delete", entity, None))
        for actions in by_partition.values():
            for chunk in chunks(actions):
                try:
                    yield Batch(self.table, chunk)
                except ConflictError:
                    for _, entity, _ in chunk:
                        yield Remove(self.table, entity["PartitionKey"], entity["RowKey"])
        return bool(rows)


_KEY_PROPS = frozenset({"PartitionKey", "RowKey", "Timestamp"})


def _payload(row: Row) -> dict[str, Any]:
    return {k: v for k, v in row.props.items() if k not in _KEY_PROPS}
