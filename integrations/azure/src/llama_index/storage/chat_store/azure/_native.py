"""The native layout: one entity per message, a meta entity per conversation, a keys partition.

In the store's table:

* PartitionKey = the encoded conversation key (:func:`encode_key`).
* Message rows: RowKey ``<gen>:<seq + 10**18, 19 digits>``; properties from
  :func:`encode_payload`. Only rows of the meta entity's generation with
  ``Head <= seq < Next`` are visible, so positions map to RowKeys without reading the
  partition (windows and counts never scan it).
* The meta entity (RowKey ``meta``): ``Key``, ``Gen``, ``Head``, ``Next``, ``Seq``,
  ``Ops``. Every change is one entity-group transaction updating it If-Match its ETag
  together with the message rows, retried on 409/412. ``Seq`` counts the changes committed
  and ``Ops`` holds the operation ids of the last :data:`OP_RECORD` of them (an id per
  call, from core's ``new_op_id``), written by the same conditional write as the change:
  a request resent after a lost reply fails its condition on its own commit, and the
  record tells it so (or, when more changes than it holds came in between, that it cannot
  tell: then the call raises ``BackendUnavailableError`` saying the outcome is unknown,
  rather than apply the change twice). An emptied conversation keeps its meta entity (and
  with it the record); ``clear()`` removes it.
* Changes larger than one transaction (100 operations, 4 MiB) write the new messages
  under a fresh generation first, then flip ``Gen`` with one conditional write, then
  delete the old generation: readers see the old or the new conversation, never a mix.
* The keys partition ``%keys`` (never produced by :func:`encode_key`) lists the
  conversations with messages; one entity per key, written before the first message
  commits (and again after a commit that created the meta entity), removed after the
  last one goes, then fenced by a conditional touch of the meta entity.
* Each store remembers the last meta entity it saw of each conversation (its own commits
  and reads; at most :data:`CACHED_CONVERSATIONS`). Appends and replaces plan on it
  without reading first: one transaction. A stale one only fails the If-Match (an ETag
  never comes back once the entity changed), and the meta read that follows — needed
  anyway to tell whether a lost reply had committed — plans the immediate retry. A pop
  reads the meta entity and the remembered last row in one range query. Counts and
  keys always read. A message read takes the rows its remembered meta names (or reads
  the meta entity first when it remembers none), then reads the meta entity: inserts
  and deletes inside a conversation rewrite rows in place, so the rows are the ones it
  named only if its ETag held from before the rows until after.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from azure.data.tables import EdmType, EntityProperty
from llama_index.storage.chat_store.azure._codec import (
    BATCH_MAX_OPS,
    PAYLOAD_PROPERTIES,
    Found,
    decode_key,
    decode_payload,
    encode_key,
    found,
    taken,
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
from llama_index.storage.chat_store.azure._record import (
    OP_RECORD,
    covers,
    recorded,
    unknown_outcome,
)
from llama_index.storage.chat_store.core import (
    ChatMessage,
    ChatStoreError,
    CorruptDataError,
    corrupt_data_remedy,
    removal_error,
)
from llama_index.storage.chat_store.core.cache import LruCache
from llama_index.storage.chat_store.core.retries import new_op_id

__all__ = ["CACHED_CONVERSATIONS", "KEYS_PARTITION", "OP_RECORD", "NativeLayout"]

META = "meta"
KEYS_PARTITION = "%keys"
_SEQ_OFFSET = 10**18
_MAX_ATTEMPTS = 200
_PAGE = 1000
# What a message read asks for: the row's key and its message. Leaving out Timestamp
# spares the SDK a strptime per row, about a quarter of a 1,000-row query's time.
_ROW_PROPERTIES = ("RowKey", *PAYLOAD_PROPERTIES)
CACHED_CONVERSATIONS = 4096
"""How many conversations' last-seen meta entities a store remembers."""


def _new_gen() -> str:
    # Random, so a conversation recreated while old rows are still being deleted, or a
    # staged generation abandoned by a crashed writer, never collides with live rows.
    return secrets.token_hex(6)


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
    seq: int
    ops: tuple[str, ...]
    etag: str | None

    @property
    def count(self) -> int:
        return self.next - self.head

    def change(self, op: str, **fields: Any) -> Meta:
        """The meta after change ``op`` (counted and recorded) sets ``fields``."""
        return replace(self, seq=self.seq + 1, ops=recorded(self.ops, op), **fields)

    def knows_since(self, planned: Meta) -> bool:
        """Whether this meta's record names every change committed after ``planned``."""
        if self.etag is None:
            # Gone (clear() or a purge of corrupt data): nothing to tell by, unless it
            # never existed either.
            return planned.etag is None
        return covers(self.seq, self.ops, planned.seq)

    def row_key(self, seq: int) -> str:
        return f"{self.gen}:{seq + _SEQ_OFFSET:019d}"


class NativeLayout:
    """Plans (see :mod:`._io`) for every store operation in the native layout."""

    def __init__(self, table: str) -> None:
        self.table = table
        # The last meta entity seen of each non-empty conversation, to plan writes without
        # reading it first. Only ever a hint: every commit is If-Match its ETag.
        self._seen: LruCache[str, Meta] = LruCache(CACHED_CONVERSATIONS)

    # -- the meta entity ----------------------------------------------------------------

    def read_meta(self, key: str) -> Plan[Meta]:
        pk = encode_key(key)
        row = yield Get(self.table, pk, META)
        if row is None:
            return self._learn(Meta(key, pk, _new_gen(), 0, 0, 0, (), None))
        return self._learn(self._parse_meta(key, pk, row))

    def _parse_meta(self, key: str, pk: str, row: Row) -> Meta:
        props = row.props
        gen, head, nxt = props.get("Gen"), props.get("Head"), props.get("Next")
        seq, ops = props.get("Seq", 0), props.get("Ops", "")
        if not (
            isinstance(gen, str)
            and isinstance(head, int)
            and isinstance(nxt, int)
            and isinstance(seq, int)
            and isinstance(ops, str)
        ):
            raise CorruptDataError(
                f"the meta entity of key {key!r} is unreadable: {props!r} "
                f"({corrupt_data_remedy(key)})",
                key=key,
                data=repr(props),
            )
        if nxt < head or props.get("Key", key) != key:
            raise CorruptDataError(
                f"the meta entity of key {key!r} is inconsistent: {props!r} "
                f"({corrupt_data_remedy(key)})",
                key=key,
                data=repr(props),
            )
        return Meta(key, pk, gen, head, nxt, seq, tuple(ops.split()), row.etag)

    def _learn(self, meta: Meta) -> Meta:
        """Remember ``meta`` as the latest state seen of its conversation; return it.

        Empty conversations are not remembered: their meta entity is about to be deleted,
        and a first write must list the key before it commits anyway.
        """
        if meta.etag and meta.count > 0:
            self._seen.put(meta.key, meta)
        else:
            self._seen.discard(meta.key)
        return meta

    def _meta_to_write(self, key: str) -> Plan[tuple[Meta, bool]]:
        """Return the meta to plan a write on and whether it is the remembered one (unread)."""
        seen = self._seen.get(key)
        if seen is not None:
            return seen, True
        return (yield from self.read_meta(key)), False

    # -- reading ------------------------------------------------------------------------

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
                select=_ROW_PROPERTIES,
                page_size=_PAGE,
                token=token,
            )
            rows.extend(page)
            if token is None:
                return rows

    def _span(self, meta: Meta, lo: int, hi: int) -> Plan[list[Row | None] | None]:
        """Read the rows of positions ``[lo, hi)`` as ``meta`` names them.

        Returns one entry per position, None where the row is missing while the meta
        entity still has ``meta``'s ETag (the conversation is corrupt at that version);
        returns None when the meta entity changed meanwhile (the caller re-reads).
        """
        span = _named(meta, lo, hi, (yield from self._rows(meta, lo, hi)))
        if all(row is not None for row in span):
            return span
        # Rows vanish only after the meta entity stops naming them (every change is one
        # conditional transaction, or a flip before the deletes): if it still has the ETag
        # we planned on, no writer is mid-way, and the rows are simply not there.
        again = yield from self.read_meta(meta.key)
        return span if again.etag == meta.etag else None

    def _rows_at(self, meta: Meta, lo: int, hi: int) -> Plan[list[Row] | None]:
        """Read rows ``[lo, hi)`` of ``meta``; None when the meta entity changed meanwhile.

        Raises:
            CorruptDataError: A row the meta entity names is missing (key and position).
        """
        span = yield from self._span(meta, lo, hi)
        return None if span is None else _present(meta, lo, span)

    def _last_row(self, seen: Meta) -> Plan[tuple[Meta | None, Row | None]]:
        """Read the meta entity and, if ``seen`` is still current, its last row: one query.

        Hex generations sort before ``meta``, so the RowKeys from ``seen``'s last row up to
        the meta entity normally hold just those two. Returns the meta entity read (None
        when other rows crowd it out of the page) and the row, which is only returned when
        the meta's ETag is ``seen``'s: then the conversation did not change between the
        moment ``seen`` was read and the commit that is conditional on that ETag, so the
        row is the one that meta names even if the query is not a snapshot.
        """
        last = seen.row_key(seen.next - 1)
        rows, _ = yield Query(
            self.table,
            "PartitionKey eq @pk and RowKey ge @lo and RowKey le @hi",
            {"pk": seen.pk, "lo": last, "hi": META},
            page_size=2,
        )
        found = {row.props.get("RowKey"): row for row in rows}
        if META not in found:
            return None, None
        meta = self._learn(self._parse_meta(seen.key, seen.pk, found[META]))
        return meta, found.get(last) if meta.etag == seen.etag else None

    def get_messages(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        # Inserts and deletes inside the conversation rewrite rows in place: the rows read
        # are the ones a meta entity names only if it held from before the rows were read
        # until after. The remembered meta serves as the read before: it was current when
        # this store saw it, and an ETag never comes back, so the same ETag after the rows
        # proves that nothing changed in between. A stale one costs one retry at once.
        meta, fresh = self._seen.get(key), False
        for attempt in range(_MAX_ATTEMPTS):
            if meta is None:
                meta, fresh = (yield from self.read_meta(key)), True
            span = range(meta.count)[offset:]
            span = span if limit is None else span[:limit]
            if not span and fresh:
                return []
            rows = (yield from self._rows(meta, span.start, span.stop)) if span else []
            after = yield from self.read_meta(key)
            if after.etag == meta.etag:
                # Unchanged throughout, so a row it names that is missing is not there.
                named = _named(meta, span.start, span.stop, rows)
                return _decode(meta, _present(meta, span.start, named), span.start)
            if fresh:  # changed while we read: back off, then read the meta entity again
                yield backoff(attempt)
                meta, fresh = None, False
            else:  # the remembered meta was stale: retry at once on the one just read
                meta, fresh = after, True
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

    def _meta_action(self, old: Meta, new: Meta) -> Action:
        """The transaction operation turning meta entity ``old`` into ``new`` (If-Match)."""
        entity = {
            "PartitionKey": old.pk,
            "RowKey": META,
            "Key": old.key,
            "Gen": new.gen,
            "Head": _int64(new.head),
            "Next": _int64(new.next),
            "Seq": _int64(new.seq),
            "Ops": " ".join(new.ops),
        }
        return ("create", entity, None) if old.etag is None else ("update", entity, old.etag)

    def _commit(self, old: Meta, new: Meta, actions: list[Action]) -> Plan[Meta]:
        """Run one transaction whose first action turns meta ``old`` into ``new``.

        Returns the meta committed (with its ETag), or the meta read after a resent
        transaction failed its condition on its own commit.

        Raises:
            ConflictError: The meta entity changed: nothing was committed.
            BackendUnavailableError: A resent transaction failed its condition and the
                record cannot tell whether its first attempt had committed.
        """
        try:
            etags = yield Batch(self.table, actions)
        except ConflictError as conflict:
            return (yield from self._settle(old, new, conflict))
        committed = self._learn(replace(new, etag=str(etags[0]) or None))
        if actions[0][0] == "create":
            yield from self._relist(committed)
        return committed

    def _put_meta(self, old: Meta, new: Meta) -> Plan[Meta]:
        """Write meta ``new`` alone, If-Match ``old``'s ETag (raises as :meth:`_commit`)."""
        verb, entity, etag = self._meta_action(old, new)
        try:
            written = yield Put(self.table, entity, verb, etag)
        except ConflictError as conflict:
            return (yield from self._settle(old, new, conflict))
        committed = self._learn(replace(new, etag=str(written) or None))
        if verb == "create":
            yield from self._relist(committed)
        return committed

    def _settle(self, old: Meta, new: Meta, conflict: ConflictError) -> Plan[Meta]:
        """After a commit planned on ``old`` failed its condition: the meta if it was ours.

        A condition that failed on a request's first attempt committed nothing. One that
        failed on a resend may have failed on the request's own earlier attempt, whose
        reply was lost: the meta entity's record of operation ids tells.
        """
        if not conflict.unsure:
            raise conflict
        now = yield from self.read_meta(old.key)
        if new.ops[-1] in now.ops:
            if old.etag is None:
                yield from self._relist(now)
            return now
        if not now.knows_since(old):
            raise unknown_outcome(
                old.key,
                f"{now.seq - old.seq} changes came in between, more than the record of "
                f"{OP_RECORD} holds",
            )
        raise conflict

    def _relist(self, created: Meta) -> Plan[None]:
        """List the key again after a commit that created the meta entity.

        The writer listed it before, but a create only needs the entity absent, and it is
        absent again after a conversation came and went meanwhile, whose emptying removed
        the listing (then the meta entity) and left nothing to list it again.
        """
        if created.count > 0:
            yield from self._list_key(created)

    def _row(self, meta: Meta, gen: str, seq: int, payload: dict[str, Any]) -> dict[str, Any]:
        row_key = f"{gen}:{seq + _SEQ_OFFSET:019d}"
        return {"PartitionKey": meta.pk, "RowKey": row_key, **payload}

    def _delete(self, meta: Meta, seq: int) -> Action:
        return ("delete", {"PartitionKey": meta.pk, "RowKey": meta.row_key(seq)}, None)

    def _list_key(self, meta: Meta) -> Plan[None]:
        yield Put(self.table, {"PartitionKey": KEYS_PARTITION, "RowKey": meta.pk, "Key": meta.key})

    def _finish_removal(self, after: Meta) -> Plan[None]:
        """Unlist the conversation if it is empty at ``after``.

        ``after`` is the meta the removal committed, or, when a resent commit found its own
        in the record, the meta read then: writers may have refilled the conversation
        since, and their listing must stay.
        """
        if after.count == 0:
            yield from self._unlist(after)

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

    def _unlist(self, emptied: Meta) -> Plan[None]:
        """Drop an emptied conversation from the keys partition, then fence the meta entity.

        The meta entity stays (its record of operation ids must outlive the retries of
        the changes it names) and is touched If-Match the ETag our emptying write
        returned. A writer that refilled the conversation meanwhile made that fail: then
        the key is listed again. A writer that read the empty meta before us fails its
        own conditional commit on the touched meta and lists the key again when it retries.
        """
        yield Remove(self.table, KEYS_PARTITION, emptied.pk)
        if emptied.etag is None:  # no ETag to fence by (the reply was lost): read instead
            again = yield from self.read_meta(emptied.key)
            if again.count > 0:
                yield from self._list_key(again)
            return
        try:
            touch = {"PartitionKey": emptied.pk, "RowKey": META}
            yield Batch(self.table, [("touch", touch, emptied.etag)])
        except ConflictError:
            again = yield from self.read_meta(emptied.key)
            if again.count > 0:
                yield from self._list_key(again)

    def _rewrite(
        self, meta: Meta, payloads: Sequence[dict[str, Any]], op: str
    ) -> tuple[Meta, list[Action]]:
        """Return the meta and the operations making ``payloads`` the whole conversation.

        The operations are the meta flip, the rows of a new generation, then the deletes of
        the visible rows of ``meta``.
        """
        new = meta.change(op, gen=_new_gen(), head=0, next=len(payloads))
        rows = [("upsert", self._row(meta, new.gen, i, p), None) for i, p in enumerate(payloads)]
        drops = [self._delete(meta, s) for s in range(meta.head, meta.next)]
        return new, [self._meta_action(meta, new), *rows, *drops]

    def _replace(
        self, meta: Meta, new: Meta, actions: list[Action], *, staged: bool = False
    ) -> Plan[Meta | None]:
        """Commit a :meth:`_rewrite`; return the new meta, or None when ``meta`` had changed.

        One transaction when it fits (and not ``staged``); else the new rows first, then the
        conditional flip, then the old generation's deletion (nothing visible changes when
        the flip fails). The staged way never names an old row, so it also replaces a
        conversation whose rows are missing.
        """
        if fits(actions) and not staged:
            try:
                return (yield from self._commit(meta, new, actions))
            except ConflictError:
                return None
        rows = [a for a in actions[1:] if a[0] == "upsert"]
        for chunk in chunks(rows):
            yield Batch(self.table, chunk)
        try:
            # A flip resent after a lost reply that fails its condition on its own commit
            # is told apart by the record: then the new generation is the conversation.
            committed = yield from self._put_meta(meta, new)
        except ConflictError:
            yield from self._delete_generation(meta.pk, new.gen)
            return None
        if meta.etag is not None:
            yield from self._delete_generation(meta.pk, meta.gen)
        return committed

    def _empty(self, meta: Meta, rows: Sequence[Row], op: str) -> Plan[Meta | None]:
        """Remove every visible message (``rows``, read at ``meta``); return the new meta.

        Returns None when the meta entity changed since ``meta`` (and not by this call's
        own commit, its reply lost). Only rows that exist are deleted, so a conversation
        missing some is removed all the same.
        """
        new = meta.change(op, gen=_new_gen(), head=0, next=0)
        actions = [self._meta_action(meta, new)]
        actions += [("delete", {"PartitionKey": meta.pk, "RowKey": r.props["RowKey"]}, None)
                    for r in rows]  # fmt: skip
        one = fits(actions)
        try:
            if one:
                committed: Meta | None = yield from self._commit(meta, new, actions)
            else:
                committed = yield from self._put_meta(meta, new)
        except ConflictError:
            committed = None
        if committed is not None and not one:
            yield from self._delete_generation(meta.pk, meta.gen)
        return committed

    @property
    def _storage(self) -> str:
        return f"Azure table {self.table!r}"

    def _found(self, meta: Meta, span: Sequence[Row | None], start: int) -> list[Found]:
        """What a removal found at positions ``start...`` of ``span`` (None: a missing row)."""
        return [
            _missing(meta, start + i)
            if row is None
            else found(decode_payload, row.props, key=meta.key, position=start + i)
            for i, row in enumerate(span)
        ]

    # -- writing ------------------------------------------------------------------------

    def append(self, key: str, payloads: Sequence[dict[str, Any]]) -> Plan[None]:
        op = new_op_id()
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
                    yield from self._commit(meta, new, actions)
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
                    old = [_payload(r) for r in existing]
                    new, rewrite = self._rewrite(meta, [*old, *payloads], op)
                    if (yield from self._replace(meta, new, rewrite)) is not None:
                        return
            yield backoff(attempt)
            meta = yield from self.read_meta(key)
        raise ChatStoreError(f"too much contention appending to key {key!r}")

    def replace(self, key: str, payloads: Sequence[dict[str, Any]]) -> Plan[None]:
        if not payloads:
            yield from self.empty(key)
            return
        op = new_op_id()
        meta, unread = yield from self._meta_to_write(key)
        staged = False
        for attempt in range(_MAX_ATTEMPTS):
            new, actions = self._rewrite(meta, payloads, op)
            if unread and not fits(actions):  # staging costs too much to risk on a stale meta
                meta, unread = (yield from self.read_meta(key)), False
                continue
            if meta.count == 0:
                yield from self._list_key(meta)
            if (yield from self._replace(meta, new, actions, staged=staged)) is not None:
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

    def delete_all(self, key: str) -> Plan[list[ChatMessage] | None]:
        """Remove the conversation; return its messages (None if there were none).

        Raises:
            CorruptDataError: A message is missing or unreadable, or the meta entity is:
                the conversation is removed all the same (one transaction with the rest,
                when it fits), then core's ``removal_error`` of the first such position.
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        op = new_op_id()
        for attempt in range(_MAX_ATTEMPTS):
            try:
                meta = yield from self.read_meta(key)
            except CorruptDataError as exc:
                yield from self._purge(key)
                raise removal_error(exc, self._storage) from exc
            if meta.count == 0:
                return None
            span = yield from self._span(meta, 0, meta.count)
            if span is not None:
                items = self._found(meta, span, 0)  # before removing anything
                rows = [row for row in span if row is not None]
                emptied = yield from self._empty(meta, rows, op)
                if emptied is not None:
                    yield from self._finish_removal(emptied)
                    return taken(items, self.table)
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention deleting key {key!r}")

    def empty(self, key: str) -> Plan[None]:
        """Remove the conversation without reading its messages (works on corrupt data).

        A meta entity that cannot be read is deleted with every entity of its partition;
        rows a readable meta entity names but that are missing are skipped.
        """
        op = new_op_id()
        for attempt in range(_MAX_ATTEMPTS):
            try:
                meta = yield from self.read_meta(key)
            except CorruptDataError:
                yield from self._purge(key)
                return
            if meta.count == 0:
                return
            span = yield from self._span(meta, 0, meta.count)
            if span is not None:
                rows = [row for row in span if row is not None]
                emptied = yield from self._empty(meta, rows, op)
                if emptied is not None:
                    yield from self._finish_removal(emptied)
                    return
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
        yield Remove(self.table, KEYS_PARTITION, pk)

    def delete_at(self, key: str, idx: int) -> Plan[ChatMessage | None]:
        """Remove and return the message at ``idx``, shifting the shorter side by one.

        Raises:
            CorruptDataError: The message is missing or unreadable: it is removed all the
                same, then core's ``removal_error`` of it. (Or, removing nothing, a message
                that must shift is missing: the shift could not keep it.)
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        op = new_op_id()
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
                    raise _missing(meta, lo + span.index(None))
                [item] = self._found(meta, [target], i)
                if front:
                    shifted = [("upsert", self._row(meta, meta.gen, meta.head + j + 1,
                                _payload(r)), None) for j, r in enumerate(moved) if r]  # fmt: skip
                    new, dropped = meta.change(op, head=meta.head + 1), meta.head
                else:
                    shifted = [("upsert", self._row(meta, meta.gen, meta.head + i + j,
                                _payload(r)), None) for j, r in enumerate(moved) if r]  # fmt: skip
                    new, dropped = meta.change(op, next=meta.next - 1), meta.next - 1
                actions = [self._meta_action(meta, new), *shifted]
                if target is not None or dropped != meta.head + i:  # a missing row: no delete
                    actions.append(self._delete(meta, dropped))
                after = yield from self._commit_or_rewrite(meta, new, actions, i, None)
                if after is not None:
                    yield from self._finish_removal(after)
                    [message] = taken([item], self.table)
                    return message
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention deleting from key {key!r}")

    def insert_at(self, key: str, idx: int, payload: dict[str, Any]) -> Plan[None]:
        op = new_op_id()
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
                moved = [("upsert", self._row(meta, meta.gen, meta.head - 1 + j, _payload(r)),
                          None) for j, r in enumerate(rows or [])]  # fmt: skip
                added = ("upsert", self._row(meta, meta.gen, meta.head - 1 + p, payload), None)
                new = meta.change(op, head=meta.head - 1)
            else:
                rows = yield from self._rows_at(meta, p, n)
                moved = [("upsert", self._row(meta, meta.gen, meta.head + p + 1 + j, _payload(r)),
                          None) for j, r in enumerate(rows or [])]  # fmt: skip
                added = ("upsert", self._row(meta, meta.gen, meta.head + p, payload), None)
                new = meta.change(op, next=meta.next + 1)
            actions = [self._meta_action(meta, new), *moved, added]
            if rows is not None and (
                yield from self._commit_or_rewrite(meta, new, actions, p, payload)
            ):
                return
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention inserting into key {key!r}")

    def _commit_or_rewrite(
        self,
        meta: Meta,
        new: Meta,
        actions: list[Action],
        position: int,
        insert: dict[str, Any] | None,
    ) -> Plan[Meta | None]:
        """Commit a shift in one transaction, or rewrite the conversation when it is too big.

        ``insert`` None: remove ``position``; else insert ``insert`` at ``position``.
        Returns the meta written, or None when ``meta`` had changed (nothing done).
        """
        if fits(actions):
            try:
                return (yield from self._commit(meta, new, actions))
            except ConflictError:
                return None
        span = yield from self._span(meta, 0, meta.count)
        if span is None:
            return None
        kept = [(p, r) for p, r in enumerate(span) if insert is not None or p != position]
        missing = [p for p, r in kept if r is None]
        if missing:  # a rewrite cannot keep a row that is not there
            raise _missing(meta, missing[0])
        payloads = [_payload(r) for _, r in kept if r is not None]
        if insert is not None:
            payloads.insert(position, insert)
        rewritten, rewrite = self._rewrite(meta, payloads, new.ops[-1])
        return (yield from self._replace(meta, rewritten, rewrite))

    def pop_last(self, key: str) -> Plan[ChatMessage | None]:
        """Remove and return the last message.

        Raises:
            CorruptDataError: It is missing or unreadable: it is removed all the same (in
                the transaction that moves the meta entity), then core's ``removal_error``.
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        op = new_op_id()
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
                    after: Meta | None = yield from self._commit(meta, new, actions)
                except ConflictError:
                    after = None
                if after is not None:
                    yield from self._finish_removal(after)
                    [message] = taken([item], self.table)
                    return message
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention popping from key {key!r}")

    def delete_oldest(self, key: str, n: int) -> Plan[list[ChatMessage]]:
        """Remove and return the first ``n`` messages.

        Raises:
            CorruptDataError: One is missing or unreadable: they are removed all the same,
                then core's ``removal_error`` of the first such position.
            SerializationError: A message this mode cannot represent; nothing is removed.
        """
        op = new_op_id()
        for attempt in range(_MAX_ATTEMPTS):
            meta = yield from self.read_meta(key)
            m = min(max(n, 0), meta.count)
            if m == 0:
                return []
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
                        after: Meta | None = yield from self._commit(meta, new, actions)
                    else:
                        after = yield from self._put_meta(meta, new)
                except ConflictError:
                    after = None
                if after is not None:
                    if not one:
                        yield from self._delete_rows(meta.pk, deletes)
                    yield from self._finish_removal(after)
                    return taken(items, self.table)
            yield backoff(attempt)
        raise ChatStoreError(f"too much contention deleting from key {key!r}")

    def _delete_rows(self, pk: str, deletes: list[Action]) -> Plan[None]:
        """Delete rows the meta entity no longer names; one that changed (reused) stays."""
        for chunk in chunks(deletes):
            try:
                yield Batch(self.table, chunk)
            except ConflictError:
                for _, entity, etag in chunk:
                    with contextlib.suppress(ConflictError):
                        yield Remove(self.table, pk, entity["RowKey"], etag=etag)

    def clear_plans(self) -> list[Callable[[], Plan[bool]]]:
        """Plans to repeat until they return False, emptying the store's table."""
        self._seen.clear()
        return [self.clear_page]

    def clear_page(self) -> Plan[bool]:
        """Delete up to one page of the table's entities; return whether any were left."""
        rows, _ = yield Query(self.table, "PartitionKey ne @none", {"none": ""},
                              select=("PartitionKey", "RowKey"), page_size=_PAGE)  # fmt: skip
        by_partition: dict[str, list[Action]] = {}
        for row in rows:
            entity = {"PartitionKey": row.props["PartitionKey"], "RowKey": row.props["RowKey"]}
            by_partition.setdefault(entity["PartitionKey"], []).append(("delete", entity, None))
        for pk, actions in by_partition.items():
            # The meta entity goes first: a reader never finds it naming rows already gone
            # (which would read as corrupt data rather than as a change).
            metas = [a for a in actions if a[1]["RowKey"] == META]
            if pk != KEYS_PARTITION and not metas:  # on a later page
                yield Remove(self.table, pk, META)
            actions = metas + [a for a in actions if a[1]["RowKey"] != META]
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


def _named(meta: Meta, lo: int, hi: int, rows: Sequence[Row]) -> list[Row | None]:
    """Line rows read up with positions ``[lo, hi)`` of ``meta`` (None: not among them)."""
    found = {row.props.get("RowKey"): row for row in rows}
    return [found.get(meta.row_key(meta.head + p)) for p in range(lo, hi)]


def _present(meta: Meta, lo: int, span: list[Row | None]) -> list[Row]:
    """Return the rows of a span read at a stable ``meta``.

    Raises:
        CorruptDataError: A row is missing (names key and position).
    """
    rows = [row for row in span if row is not None]
    if len(rows) < len(span):
        raise _missing(meta, lo + span.index(None))
    return rows


def _missing(meta: Meta, position: int) -> CorruptDataError:
    return CorruptDataError(
        f"the message at key {meta.key!r} position {position} is missing: the meta entity "
        f"names {meta.count} messages of generation {meta.gen!r}, RowKey "
        f"{meta.row_key(meta.head + position)!r} not found ({corrupt_data_remedy(meta.key)})",
        key=meta.key,
        position=position,
    )


def _decode(meta: Meta, rows: Sequence[Row], start: int) -> list[ChatMessage]:
    """Parse rows read from position ``start``.

    Raises:
        CorruptDataError: A row holds no message (names key, position, how to remove it).
        SerializationError: Valid data this mode cannot represent.
    """
    return [
        decode_payload(row.props, key=meta.key, position=start + i) for i, row in enumerate(rows)
    ]
