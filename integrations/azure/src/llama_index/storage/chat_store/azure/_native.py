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
  call: the kit's ``Change.id``), written by the same conditional write as the change:
  a request resent after a lost reply fails its condition on its own commit, and the
  record tells it so (or, when more changes than it holds came in between, that it cannot
  tell: then the call raises ``BackendUnavailableError`` saying the outcome is unknown,
  rather than apply the change twice). An emptied conversation keeps its meta entity (and
  with it the record); ``clear()`` removes it.
* The meta entity also holds the conversation's catalog entry (``Capability.CATALOG``):
  ``Created`` and ``Updated`` (epoch milliseconds, this client's clock) and ``Metadata``
  (a JSON object), kept by the same conditional write as every change (see
  :meth:`Meta.change`). Meta entities written before the catalog lack them: times are
  None and metadata empty until a change stamps ``Updated`` (``Created`` stays unknown).
* Changes larger than one transaction (100 operations, 4 MiB) write the new messages
  under a fresh generation first, then flip ``Gen`` with one conditional write, then
  delete the old generation: readers see the old or the new conversation, never a mix.
* The keys partition ``%keys`` (never produced by :func:`encode_key`) lists the
  conversations with messages; one entity per key, written before the first message
  commits (and again after a commit that created the meta entity), removed after the
  last one goes, then fenced by a conditional touch of the meta entity. The order
  partition ``%order`` lists them again, under RowKeys that sort as the keys do
  (:func:`order_key`), written and removed with the ``%keys`` entity: the catalog's
  index (:mod:`._catalog`).
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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from azure.data.tables import EdmType, EntityProperty
from llama_index.storage.chat_store.azure._codec import (
    PAYLOAD_PROPERTIES,
    Action,
    Found,
    decode_key,
    decode_payload,
    encode_key,
    found,
    order_key,
    taken,
)
from llama_index.storage.chat_store.azure._record import OP_RECORD, RACE, covers, resent
from llama_index.storage.chat_store.azure._sdk import (
    IN_RANGE,
    PAGE,
    Batch,
    Get,
    Put,
    Query,
    Remove,
    Row,
    query_all,
)
from llama_index.storage.chat_store.core import ChatMessage, CorruptDataError
from llama_index.storage.chat_store.core.backend import (
    Change,
    ConflictError,
    Plan,
    corrupt_data_remedy,
)
from llama_index.storage.chat_store.core.cache import LruCache
from llama_index.storage.chat_store.core.meta import Entry, recorded, unknown_outcome

__all__ = [
    "CACHED_CONVERSATIONS",
    "KEYS_PARTITION",
    "META",
    "OP_RECORD",
    "ORDER_PARTITION",
    "Meta",
    "NativeTable",
    "missing",
    "new_gen",
    "payload_of",
]

META = "meta"
KEYS_PARTITION = "%keys"
ORDER_PARTITION = "%order"
_SEQ_OFFSET = 10**18
# What a message read asks for: the row's key and its message. Leaving out Timestamp
# spares the SDK a strptime per row, about a quarter of a 1,000-row query's time.
_ROW_PROPERTIES = ("RowKey", *PAYLOAD_PROPERTIES)
_STRING_MAX_UNITS = 32_768
CACHED_CONVERSATIONS = 4096
"""How many conversations' last-seen meta entities a store remembers."""


def new_gen() -> str:
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
    entry: Entry = field(default_factory=Entry)
    """The catalog entry (``Created``, ``Updated``, ``Metadata``)."""

    @property
    def count(self) -> int:
        return self.next - self.head

    def change(self, op: str, **fields: Any) -> Meta:
        """The meta after change ``op`` (counted, recorded, stamped) sets ``fields``.

        The catalog entry lives with the messages (core's :meth:`Entry.changed`).
        """
        new = replace(self, seq=self.seq + 1, ops=recorded(self.ops, op, OP_RECORD), **fields)
        return replace(new, entry=new.entry.changed(self.count, new.count))

    def knows_since(self, planned: Meta) -> bool:
        """Whether this meta's record names every change committed after ``planned``."""
        if self.etag is None:
            # Gone (clear() or a purge of corrupt data): nothing to tell by, unless it
            # never existed either.
            return planned.etag is None
        return covers(self.seq, self.ops, planned.seq)

    def row_key(self, seq: int) -> str:
        return f"{self.gen}:{seq + _SEQ_OFFSET:019d}"


class NativeTable:
    """The native layout's reads and the building blocks of its changes (:mod:`._native_writes`)."""

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
            return self._learn(Meta(key, pk, new_gen(), 0, 0, 0, (), None))
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
            raise _bad_meta(key, "unreadable", props)
        if nxt < head or props.get("Key", key) != key:
            raise _bad_meta(key, "inconsistent", props)
        metadata = props.get("Metadata")
        if isinstance(metadata, bytes):  # too long for a string property (see _meta_action)
            with contextlib.suppress(UnicodeDecodeError):
                metadata = metadata.decode("utf-8")
        entry = Entry.read(self._storage, key, props.get("Created"), props.get("Updated"), metadata)
        return Meta(key, pk, gen, head, nxt, seq, tuple(ops.split()), row.etag, entry)

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

    # -- reading ------------------------------------------------------------------------

    def _range(self, pk: str, lo: str, hi: str, select: tuple[str, ...]) -> Plan[list[Row]]:
        """Read the entities of partition ``pk`` from RowKey ``lo`` up to ``hi``."""
        params = {"pk": pk, "lo": lo, "hi": hi}
        return query_all(Query(self.table, IN_RANGE, params, select, PAGE))

    def _rows(self, meta: Meta, lo: int, hi: int) -> Plan[list[Row]]:
        """Read the rows of positions ``[lo, hi)`` (fewer if they changed meanwhile)."""
        if hi <= lo:
            return []
        first, end = meta.row_key(meta.head + lo), meta.row_key(meta.head + hi)
        return (yield from self._range(meta.pk, first, end, _ROW_PROPERTIES))

    def _span(self, meta: Meta, lo: int, hi: int) -> Plan[list[Row | None]]:
        """Read the rows of positions ``[lo, hi)`` as ``meta`` names them.

        Returns one entry per position, None where the row is missing while the meta
        entity still has ``meta``'s ETag (the conversation is corrupt at that version).

        Raises:
            ConflictError: The meta entity changed meanwhile (the attempt starts over).
        """
        span = _named(meta, lo, hi, (yield from self._rows(meta, lo, hi)))
        if all(row is not None for row in span):
            return span
        # Rows vanish only after the meta entity stops naming them (every change is one
        # conditional transaction, or a flip before the deletes): if it still has the ETag
        # we planned on, no writer is mid-way, and the rows are simply not there.
        again = yield from self.read_meta(meta.key)
        if again.etag != meta.etag:
            raise ConflictError(f"key {meta.key!r} changed while its rows were read")
        return span

    def _rows_at(self, meta: Meta, lo: int, hi: int) -> Plan[list[Row]]:
        """Read rows ``[lo, hi)`` of ``meta``.

        Raises:
            CorruptDataError: A row the meta entity names is missing (key and position).
            ConflictError: The meta entity changed meanwhile.
        """
        return _present(meta, lo, (yield from self._span(meta, lo, hi)))

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
        params = {"pk": seen.pk, "lo": last, "hi": META}
        where = "PartitionKey eq @pk and RowKey ge @lo and RowKey le @hi"
        rows, _ = yield Query(self.table, where, params, page_size=2)
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
        seen = self._seen.get(key)

        def attempt() -> Plan[list[ChatMessage]]:
            nonlocal seen
            meta, fresh, seen = seen, False, None
            while True:
                if meta is None:
                    meta, fresh = (yield from self.read_meta(key)), True
                span = range(meta.count)[offset:]
                span = span if limit is None else span[:limit]
                if not span and fresh:
                    return []
                rows = yield from self._rows(meta, span.start, span.stop)
                after = yield from self.read_meta(key)
                if after.etag == meta.etag:
                    # Unchanged throughout, so a row it names that is missing is not there.
                    named = _named(meta, span.start, span.stop, rows)
                    pairs = zip(span, _present(meta, span.start, named), strict=True)
                    return [decode_payload(r.props, key=key, position=p) for p, r in pairs]
                if fresh:  # changed while we read: back off, then read the meta entity again
                    raise ConflictError(f"key {key!r} changed while read")
                meta, fresh = after, True  # the remembered meta was stale: retry at once

        return (yield from RACE.run(key, self._storage, attempt))

    def count_messages(self, key: str) -> Plan[int]:
        meta = yield from self.read_meta(key)
        return meta.count

    def keys_page(self, token: Any, page_size: int = PAGE) -> Plan[tuple[list[str], Any]]:
        where, params = "PartitionKey eq @pk", {"pk": KEYS_PARTITION}
        rows, token = yield Query(self.table, where, params, ("RowKey", "Key"), page_size, token)
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
        created, updated, metadata = new.entry.created, new.entry.updated, new.entry.metadata
        for name, stamp in (("Created", created), ("Updated", updated)):
            if stamp is not None:
                entity[name] = _int64(stamp)
        if metadata is not None:
            # Names escaped in JSON can outgrow a string property (32,768 UTF-16 units)
            # within the 8 KiB limit; a binary one holds 64 KiB of UTF-8.
            fits = len(metadata.encode("utf-16-le")) // 2 <= _STRING_MAX_UNITS
            entity["Metadata"] = metadata if fits else metadata.encode("utf-8")
        return ("create", entity, None) if old.etag is None else ("update", entity, old.etag)

    def _commit(
        self, old: Meta, new: Meta, actions: list[Action], change: Change, *, alone: bool = False
    ) -> Plan[Meta]:
        """Run one transaction whose first action turns meta ``old`` into ``new``.

        ``alone``: write only that first action, the meta entity (If-Match ``old``'s ETag).
        Returns the meta committed (with its ETag), or the meta read after a resent
        transaction failed its condition on its own commit.

        Raises:
            ConflictError: The meta entity changed: nothing was committed.
            BackendUnavailableError: A resent transaction failed its condition and the
                record cannot tell whether its first attempt had committed.
        """
        verb, entity, etag = actions[0]
        change.check = False
        try:
            if alone:
                written = yield Put(self.table, entity, verb, etag)
            else:
                written = (yield Batch(self.table, actions))[0]
        except ConflictError as conflict:
            return (yield from self._settle(old, new, change, conflict))
        committed = self._learn(replace(new, etag=str(written) or None))
        if verb == "create":
            yield from self._relist(committed)
        return committed

    def _settle(self, old: Meta, new: Meta, change: Change, conflict: ConflictError) -> Plan[Meta]:
        """After a commit planned on ``old`` failed its condition: the meta if it was ours.

        A condition that failed on a request's first attempt committed nothing. One that
        failed on a resend may have failed on the request's own earlier attempt, whose
        reply was lost (the kit then set ``change.check``): the meta entity's record of
        operation ids tells.
        """
        if not resent(change):
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

    def _upsert(self, meta: Meta, seq: int, payload: dict[str, Any], gen: str = "") -> Action:
        """Write ``payload`` as row ``seq`` of generation ``gen`` (default: ``meta``'s)."""
        row_key = f"{gen or meta.gen}:{seq + _SEQ_OFFSET:019d}"
        return ("upsert", {"PartitionKey": meta.pk, "RowKey": row_key, **payload}, None)

    def _delete(self, meta: Meta, seq: int) -> Action:
        return ("delete", {"PartitionKey": meta.pk, "RowKey": meta.row_key(seq)}, None)

    def _list_key(self, meta: Meta) -> Plan[None]:
        yield Put(self.table, {"PartitionKey": KEYS_PARTITION, "RowKey": meta.pk, "Key": meta.key})
        order = {"PartitionKey": ORDER_PARTITION, "RowKey": order_key(meta.key), "Key": meta.key}
        yield Put(self.table, order)

    def _drop_listing(self, key: str, pk: str) -> Plan[None]:
        yield Remove(self.table, KEYS_PARTITION, pk)
        yield Remove(self.table, ORDER_PARTITION, order_key(key))

    def _removed(self, after: Meta, items: Sequence[Found]) -> Plan[list[ChatMessage]]:
        """Unlist the conversation if it is empty at ``after``; return the messages removed.

        ``after`` is the meta the removal committed, or, when a resent commit found its own
        in the record, the meta read then: writers may have refilled the conversation
        since, and their listing must stay.

        Raises:
            CorruptDataError: An item was unreadable (core's ``removal_error`` of the first).
        """
        if after.count == 0:
            yield from self._unlist(after)
        return taken(items, self.table)

    def _unlist(self, emptied: Meta) -> Plan[None]:
        """Drop an emptied conversation from the keys partition, then fence the meta entity.

        The meta entity stays (its record of operation ids must outlive the retries of
        the changes it names) and is touched If-Match the ETag our emptying write
        returned. A writer that refilled the conversation meanwhile made that fail: then
        the key is listed again. A writer that read the empty meta before us fails its
        own conditional commit on the touched meta and lists the key again when it retries.
        """
        yield from self._drop_listing(emptied.key, emptied.pk)
        if emptied.etag is not None:
            with contextlib.suppress(ConflictError):
                touch = {"PartitionKey": emptied.pk, "RowKey": META}
                yield Batch(self.table, [("touch", touch, emptied.etag)])
                return
        # Refilled meanwhile, or no ETag to fence by (the reply was lost): read instead.
        again = yield from self.read_meta(emptied.key)
        if again.count > 0:
            yield from self._list_key(again)

    @property
    def _storage(self) -> str:
        return f"Azure table {self.table!r}"

    def _found(self, meta: Meta, span: Sequence[Row | None], start: int) -> list[Found]:
        """What a removal found at positions ``start...`` of ``span`` (None: a missing row)."""
        return [
            missing(meta, start + i)
            if row is None
            else found(decode_payload, row.props, key=meta.key, position=start + i)
            for i, row in enumerate(span)
        ]


_KEY_PROPS = frozenset({"PartitionKey", "RowKey", "Timestamp"})


def payload_of(row: Row) -> dict[str, Any]:
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
        raise missing(meta, lo + span.index(None))
    return rows


def _bad_meta(key: str, what: str, props: dict[str, Any]) -> CorruptDataError:
    return CorruptDataError(
        f"the meta entity of key {key!r} is {what}: {props!r} ({corrupt_data_remedy(key)})",
        key=key,
        data=repr(props),
    )


def missing(meta: Meta, position: int) -> CorruptDataError:
    return CorruptDataError(
        f"the message at key {meta.key!r} position {position} is missing: the meta entity "
        f"names {meta.count} messages of generation {meta.gen!r}, RowKey "
        f"{meta.row_key(meta.head + position)!r} not found ({corrupt_data_remedy(meta.key)})",
        key=meta.key,
        position=position,
    )
