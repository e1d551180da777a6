"""LlamaIndex's AzureChatStore layout, read and written (``layout="llama_index"``).

* Chat table: one entity per message, PartitionKey = the key, RowKey = ``f"{idx:010}"``,
  properties ``role``, ``additional_kwargs``, ``blocks`` as JSON text (split into
  ``<name>_part_N`` over 64 KiB of UTF-16).
* Metadata table: PartitionKey = ``metadata_partition_key`` (default: the chat table's
  name), RowKey = the key, ``LastMessageRowKey`` and ``MessageCount`` (LlamaIndex uses
  the count as the next RowKey).

LlamaIndex appends with read-count-then-write (two writers lose one message) and can
leave holes in the RowKeys. Here the chat rows are the truth, read in RowKey order:
appends ``create`` the next RowKeys in one transaction (a concurrent writer that took
them makes it fail with 409, and it retries further on), removals are conditional on
each row's ETag, and the metadata entity is brought up to date afterwards. What this
layout cannot make atomic: a change spanning more than one transaction (over 100 rows
or 4 MiB) is written in several, and the metadata entity trails the rows briefly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llama_index.storage.chat_store.azure._codec import (
    decode_key,
    decode_llama_index_message,
    encode_key,
    removed_error,
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

__all__ = ["LlamaIndexLayout"]

_MAX_ATTEMPTS = 200
_PAGE = 1000
_KEY_PROPS = frozenset({"PartitionKey", "RowKey", "Timestamp"})


def _row_key(index: int) -> str:
    return f"{index:010}"


def _index(row: Row, key: str) -> int:
    row_key = row.props.get("RowKey", "")
    if not (isinstance(row_key, str) and row_key.isdigit()):
        raise CorruptDataError(f"chat row {row_key!r} of key {key!r} is not a LlamaIndex row")
    return int(row_key)


def _payload(row: Row) -> dict[str, Any]:
    return {k: v for k, v in row.props.items() if k not in _KEY_PROPS}


def _decode(
    key: str, rows: Sequence[Row], start: int
) -> tuple[list[ChatMessage | None], CorruptDataError | None]:
    """Parse rows for a removal: None (and the first error) where the data is corrupt.

    The removal goes ahead and raises afterwards (corrupt data must be deletable); a
    SerializationError (data this mode cannot represent) propagates before anything is
    removed.
    """
    messages: list[ChatMessage | None] = []
    error: CorruptDataError | None = None
    for i, row in enumerate(rows):
        try:
            messages.append(decode_llama_index_message(row.props, key=key, position=start + i))
        except CorruptDataError as exc:
            messages.append(None)
            error = error or exc
    return messages, error


def _kept(
    rows: Sequence[Row], messages: Sequence[ChatMessage | None], removed: Sequence[Row]
) -> list[ChatMessage]:
    """The messages of the rows this call removed, in order."""
    gone = {r.props["RowKey"] for r in removed}
    pairs = zip(rows, messages, strict=True)
    return [m for r, m in pairs if r.props["RowKey"] in gone and m is not None]


class LlamaIndexLayout:
    """Plans for every store operation in LlamaIndex's two-table layout."""

    def __init__(self, chat_table: str, metadata_table: str, partition: str) -> None:
        self.table = chat_table
        self.meta_table = metadata_table
        self.partition = partition

    # -- reading ------------------------------------------------------------------------

    def _rows(self, key: str, *, keys_only: bool = False) -> Plan[list[Row]]:
        rows: list[Row] = []
        token = None
        while True:
            page, token = yield Query(
                self.table,
                "PartitionKey eq @pk",
                {"pk": encode_key(key)},
                select=("RowKey",) if keys_only else None,
                page_size=_PAGE,
                token=token,
            )
            rows.extend(page)
            if token is None:
                return rows

    def get_messages(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        rows = yield from self._rows(key)
        span = range(len(rows))[offset:]
        span = span if limit is None else span[:limit]
        return [decode_llama_index_message(rows[i].props, key=key, position=i) for i in span]

    def count_messages(self, key: str) -> Plan[int]:
        rows = yield from self._rows(key, keys_only=True)
        return len(rows)

    def keys_page(self, token: Any) -> Plan[tuple[list[str], Any]]:
        rows, token = yield Query(
            self.meta_table,
            "PartitionKey eq @pk and MessageCount gt @zero",
            {"pk": self.partition, "zero": 0},
            select=("RowKey", "Key"),
            page_size=_PAGE,
            token=token,
        )
        return [decode_key(r.props["RowKey"], r.props.get("Key")) for r in rows], token

    # -- metadata -----------------------------------------------------------------------

    def _meta_entity(self, key: str, last: int) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": self.partition,
            "RowKey": encode_key(key),
            "LastMessageRowKey": _row_key(last),
            "MessageCount": last + 1,
        }
        if entity["RowKey"] != key:
            entity["Key"] = key
        return entity

    def _raise_meta(self, key: str, last: int) -> Plan[None]:
        """Make the metadata say at least ``last`` is the last RowKey (appends)."""
        for attempt in range(_MAX_ATTEMPTS):
            row = yield Get(self.meta_table, self.partition, encode_key(key))
            count = row.props.get("MessageCount") if row is not None else None
            if isinstance(count, int) and count >= last + 1:
                return
            entity = self._meta_entity(key, last)
            try:
                if row is None:
                    yield Put(self.meta_table, entity, "create")
                else:
                    yield Put(self.meta_table, entity, "update", row.etag)
                return
            except ConflictError:
                yield backoff(attempt)
        raise ChatStoreError(f"too much contention on the metadata of key {key!r}")

    def _refresh_meta(self, key: str) -> Plan[None]:
        """Recompute the metadata from the chat rows (after removals)."""
        for attempt in range(_MAX_ATTEMPTS):
            row = yield Get(self.meta_table, self.partition, encode_key(key))
            rows = yield from self._rows(key, keys_only=True)
            try:
                if not rows:
                    if row is not None:
                        yield Remove(self.meta_table, self.partition, encode_key(key), row.etag)
                    return
                entity = self._meta_entity(key, _index(rows[-1], key))
                if row is None:
                    yield Put(self.meta_table, entity, "create")
                elif any(row.props.get(k) != v for k, v in entity.items()):
                    yield Put(self.meta_table, entity, "update", row.etag)
                return
            except ConflictError:
                yield backoff(attempt)
        raise ChatStoreError(f"too much contention on the metadata of key {key!r}")

    # -- writing ------------------------------------------------------------------------

    def append(self, key: str, payloads: Sequence[dict[str, Any]]) -> Plan[None]:
        pk = encode_key(key)
        meta = yield Get(self.meta_table, self.partition, pk)
        count = meta.props.get("MessageCount") if meta is not None else None
        start = count if isinstance(count, int) and count > 0 else 0
        done = 0
        for attempt in range(_MAX_ATTEMPTS):
            actions: list[Action] = [
                ("create", {"PartitionKey": pk, "RowKey": _row_key(start + i), **p}, None)
                for i, p in enumerate(payloads[done:])
            ]
            try:
                for chunk in [actions] if fits(actions) else chunks(actions):
                    yield Batch(self.table, chunk)
                    start, done = start + len(chunk), done + len(chunk)
                yield from self._raise_meta(key, start - 1)
                return
            except ConflictError:
                # Another writer holds these RowKeys: continue after the last row there is.
                rows = yield from self._rows(key, keys_only=True)
                start = _index(rows[-1], key) + 1 if rows else 0
                yield backoff(attempt)
        raise ChatStoreError(f"too much contention appending to key {key!r}")

    def replace(self, key: str, payloads: Sequence[dict[str, Any]]) -> Plan[None]:
        if not payloads:
            yield from self.delete_all(key)
            return
        pk = encode_key(key)
        rows = yield from self._rows(key, keys_only=True)
        keep = {_row_key(i) for i in range(len(payloads))}
        actions: list[Action] = [
            ("upsert", {"PartitionKey": pk, "RowKey": _row_key(i), **p}, None)
            for i, p in enumerate(payloads)
        ]
        actions += [("delete", {"PartitionKey": pk, "RowKey": r.props["RowKey"]}, None)
                    for r in rows if r.props["RowKey"] not in keep]  # fmt: skip
        for chunk in [actions] if fits(actions) else chunks(actions):
            yield Batch(self.table, chunk)
        yield from self._refresh_meta(key)

    def _remove(self, key: str, rows: Sequence[Row]) -> Plan[list[Row]]:
        """Delete rows If-Match their ETags; return those this call removed."""
        pk = encode_key(key)
        actions: list[Action] = [
            ("delete", {"PartitionKey": pk, "RowKey": r.props["RowKey"]}, r.etag) for r in rows
        ]
        removed: list[Row] = []
        for chunk in chunks(actions):
            try:
                yield Batch(self.table, chunk)
                done = {a[1]["RowKey"] for a in chunk}
            except ConflictError:
                done = set()
                for _, entity, etag in chunk:
                    try:
                        yield Remove(self.table, pk, entity["RowKey"], etag)
                        done.add(entity["RowKey"])
                    except ConflictError:
                        pass
            removed += [r for r in rows if r.props["RowKey"] in done]
        return removed

    def delete_all(self, key: str) -> Plan[list[ChatMessage] | None]:
        rows = yield from self._rows(key)
        if not rows:
            yield from self._refresh_meta(key)
            return None
        messages, error = _decode(key, rows, 0)
        removed = yield from self._remove(key, rows)
        yield from self._refresh_meta(key)
        if error is not None:
            raise removed_error(error) from error
        return _kept(rows, messages, removed) or None

    def pop_last(self, key: str) -> Plan[ChatMessage | None]:
        for attempt in range(_MAX_ATTEMPTS):
            keys = yield from self._rows(key, keys_only=True)
            if not keys:
                return None
            row = yield Get(self.table, encode_key(key), keys[-1].props["RowKey"])
            if row is not None:
                [message], error = _decode(key, [row], len(keys) - 1)
                try:
                    yield Remove(self.table, encode_key(key), keys[-1].props["RowKey"], row.etag)
                except ConflictError:
                    yield backoff(attempt)
                    continue
                yield from self._refresh_meta(key)
                if error is not None:
                    raise removed_error(error) from error
                return message
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention popping from key {key!r}")

    def delete_oldest(self, key: str, n: int) -> Plan[list[ChatMessage]]:
        rows = yield from self._rows(key)
        first = rows[: max(n, 0)]
        if not first:
            return []
        messages, error = _decode(key, first, 0)
        removed = yield from self._remove(key, first)
        yield from self._refresh_meta(key)
        if error is not None:
            raise removed_error(error) from error
        return _kept(first, messages, removed)

    def _shift(self, key: str, moves: list[Action]) -> Plan[bool]:
        """Run shifting writes (conditional on the rows' ETags); False on a conflict."""
        try:
            for chunk in [moves] if fits(moves) else chunks(moves):
                yield Batch(self.table, chunk)
        except ConflictError:
            return False
        yield from self._refresh_meta(key)
        return True

    def delete_at(self, key: str, idx: int) -> Plan[ChatMessage | None]:
        pk = encode_key(key)
        for attempt in range(_MAX_ATTEMPTS):
            rows = yield from self._rows(key)
            n = len(rows)
            i = idx + n if idx < 0 else idx
            if not 0 <= i < n:
                return None
            [message], error = _decode(key, [rows[i]], i)
            # Keep RowKeys contiguous (LlamaIndex appends at MessageCount): move each later
            # message one row down, then drop the last row; all conditional on ETags.
            moves: list[Action] = [
                ("update", {"PartitionKey": pk, "RowKey": rows[j].props["RowKey"],
                            **_payload(rows[j + 1])}, rows[j].etag)
                for j in range(i, n - 1)
            ]  # fmt: skip
            last = rows[-1]
            moves.append(
                ("delete", {"PartitionKey": pk, "RowKey": last.props["RowKey"]}, last.etag)
            )
            if (yield from self._shift(key, moves)):
                if error is not None:
                    raise removed_error(error) from error
                return message
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention deleting from key {key!r}")

    def insert_at(self, key: str, idx: int, payload: dict[str, Any]) -> Plan[None]:
        pk = encode_key(key)
        for attempt in range(_MAX_ATTEMPTS):
            rows = yield from self._rows(key)
            n = len(rows)
            p = max(0, n + idx) if idx < 0 else min(idx, n)
            if p == n:
                yield from self.append(key, [payload])
                return
            tail = _row_key(_index(rows[-1], key) + 1)
            moves: list[Action] = [
                ("create", {"PartitionKey": pk, "RowKey": tail, **_payload(rows[-1])}, None)
            ]
            moves += [
                ("update", {"PartitionKey": pk, "RowKey": rows[j].props["RowKey"],
                            **_payload(rows[j - 1])}, rows[j].etag)
                for j in range(p + 1, n)
            ]  # fmt: skip
            target = rows[p]
            moves.append(("update", {"PartitionKey": pk, "RowKey": target.props["RowKey"],
                                     **payload}, target.etag))  # fmt: skip
            if (yield from self._shift(key, moves)):
                return
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention inserting into key {key!r}")

    # -- clearing -----------------------------------------------------------------------

    def clear_plans(self) -> list[Callable[[], Plan[bool]]]:
        """Plans to repeat until they return False: the chat table, then our metadata."""
        return [self._clear_chat_page, self._clear_meta_page]

    def _clear_chat_page(self) -> Plan[bool]:
        rows, _ = yield Query(self.table, "PartitionKey ne @none", {"none": ""},
                              select=("PartitionKey", "RowKey"), page_size=_PAGE)  # fmt: skip
        yield from self._delete_rows(self.table, rows)
        return bool(rows)

    def _clear_meta_page(self) -> Plan[bool]:
        rows, _ = yield Query(self.meta_table, "PartitionKey eq @pk", {"pk": self.partition},
                              select=("PartitionKey", "RowKey"), page_size=_PAGE)  # fmt: skip
        yield from self._delete_rows(self.meta_table, rows)
        return bool(rows)

    def _delete_rows(self, table: str, rows: Sequence[Row]) -> Plan[None]:
        by_partition: dict[str, list[Action]] = {}
        for row in rows:
            entity = {"PartitionKey": row.props["PartitionKey"], "RowKey": row.props["RowKey"]}
            by_partition.setdefault(entity["PartitionKey"], []).append(("delete", entity, None))
        for actions in by_partition.values():
            for chunk in chunks(actions):
                try:
                    yield Batch(table, chunk)
                except ConflictError:
                    for _, entity, _ in chunk:
                        yield Remove(table, entity["PartitionKey"], entity["RowKey"])
