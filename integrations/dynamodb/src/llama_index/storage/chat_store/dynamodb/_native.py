"""The recommended layout: one item per message plus one meta item per conversation.

Table: partition key ``SessionId`` (S), numeric sort key. In a conversation's partition:

* the meta item at sort key 0: ``Gen`` (generation), ``First``/``End`` (the visible sequence
  numbers are ``First <= seq < End``, so position ``p`` is ``First + p``), ``Ver`` (bumped by
  every change; every write is conditioned on it), ``Epoch`` (a random id the meta item gets
  when it is created: ``Ver`` starts over when a conversation is deleted and written anew,
  so writes are conditioned on both), ``NextGen`` (generation counter),
  ``ChatStoreKey`` (a copy of the key, only while the conversation holds messages: the hash
  key of the sparse index ``get_keys`` scans), the TTL attribute (the conversation's expiry),
  ``Floor`` (no message item expires before it), ``Chunked`` (the generation has held a
  chunked message), ``Op0`` .. ``Op15`` (the operation tags of the last 16 changes, the
  change to version ``V`` in ``Op{V mod 16}``: see :class:`Op`) and, during a large append,
  a lease. Removing the last message keeps the meta item without ``Gen``, ``First``,
  ``End`` and ``ChatStoreKey`` (so the tags outlive the conversation), expiring with the
  ttl or after a day;
* message items at sort key ``Gen * 10**13 + seq``, attribute ``Message`` = the message JSON
  and ``Written`` = the ``Ver`` of the meta that made this content visible;
* chunk items at negative sort keys holding the rest of messages over one item (``_chunks``).

Appends are one TransactWriteItems (meta update conditioned on ``Ver`` + puts), retried when
they lose a race. A replace writes a new generation and flips ``Gen`` conditionally, so readers
(who read only the meta's generation and range) see the old or the new list, never a mix; the
old generation is deleted afterwards. Inserts and deletes inside a conversation rewrite the
items on the shorter side in place, and a pop followed by an append reuses a position, so a
reader that took its range from meta version ``V`` may find items a later change wrote: every
item write carries the version it commits (``Written``), and a reader that finds an item
written after ``V``, or finds items missing because a writer removed them meanwhile, re-reads
the meta and tries again. Items with ``Written <= V`` are exactly what version ``V`` holds,
since every item write made after ``V`` carries a later version (it commits with, or after,
a meta update conditioned on ``Ver >= V``); so a read costs no extra request unless it
overlapped a change.

A store remembers the last meta item it saw or committed of each conversation (``seen``), as
a hint only. A write plans on it instead of reading the meta first: its transaction is
conditioned on that ``Ver`` and ``Epoch`` anyway, and when it loses, the failed condition
returns the current meta item, so a stale hint costs the failed transaction and no read. A
read of a short window asks for the meta item and the items ``seen`` names in one
BatchGetItem, and uses those items only if the meta item still has ``seen``'s ``Ver`` and
``Epoch``: ``Ver`` then did not move between the moment ``seen`` was current and the read,
and any later change shows as an item written after it or missing (as above), whatever the
order in which the batch read the items.

With ``refresh_on_read``, a read of a live conversation slides its expiry with one conditional
update of the meta item that leaves ``Ver`` alone (writers are not disturbed) and never
re-creates or revives a deleted or expired conversation.

An operation that fails after writing the chunks of messages too large for its transaction
(they are then written first, unreferenced) may leave those chunk items behind; they carry
the conversation's expiry when there is a ttl.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    ConfigurationError,
    CorruptDataError,
    corrupt_data_remedy,
)
from llama_index.storage.chat_store.core.cache import LruCache
from llama_index.storage.chat_store.dynamodb._chunks import (
    PARTS,
    PARTS_ID,
    Fresh,
    Head,
    encode,
    part_of,
    valid,
)
from llama_index.storage.chat_store.dynamodb._client import (
    MAX_ITEM_BYTES,
    MAX_TRANSACTION_BYTES,
    MAX_TRANSACTION_ITEMS,
    RECENT_OPS,
    ConflictError,
    Op,
    Table,
    Unreadable,
    backoff,
    item_size,
)
from llama_index.storage.chat_store.dynamodb._expr import Expr, num, text

__all__ = ["CACHED_CONVERSATIONS", "KEYS_INDEX", "NativeLayout", "native_table_definition"]

KEYS_INDEX = "ChatStoreKeys"
"""The sparse global secondary index over meta items that ``get_keys`` scans."""
_KEY_COPY = "ChatStoreKey"
_MESSAGE = "Message"
_GEN, _FIRST, _END, _VER, _NEXT = "Gen", "First", "End", "Ver", "NextGen"
_FLOOR, _LEASE, _LEASE_ID, _CHUNKED = "Floor", "Lease", "LeaseId", "Chunked"
_WRITTEN, _EPOCH = "Written", "Epoch"
_OPS = tuple(f"Op{i}" for i in range(RECENT_OPS))
# Without a ttl, the meta item left by removing a conversation (it keeps the ids of the
# changes that removed it) expires after a day, by DynamoDB's TTL where it is enabled.
_TOMBSTONE_SECONDS = 86_400
_META_SK = 0
_GEN_SPAN = 10**13
_SEQ0 = 5 * 10**12
_LEASE_SECONDS = 60
# Transaction actions besides the messages: the meta update.
_TXN_MESSAGES = MAX_TRANSACTION_ITEMS - 1
CACHED_CONVERSATIONS = 4096
"""How many conversations' last-seen meta items a store remembers."""
# Ranges of up to this many items are read by key (BatchGetItem, which also takes the meta
# item) rather than by Query: one request instead of two for short conversations and
# windows, at one read unit per item (a Query sums small items into 4 KB units).
_READ_BY_KEY = 25


def native_table_definition(table: str, pk: str, sk: str, ttl_attribute: str) -> dict[str, Any]:
    """Return CreateTable parameters for the recommended table (on-demand billing)."""
    return {
        "TableName": table,
        "AttributeDefinitions": [
            {"AttributeName": pk, "AttributeType": "S"},
            {"AttributeName": sk, "AttributeType": "N"},
            {"AttributeName": _KEY_COPY, "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": pk, "KeyType": "HASH"},
            {"AttributeName": sk, "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": KEYS_INDEX,
                "KeySchema": [{"AttributeName": _KEY_COPY, "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": [ttl_attribute]},
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


@dataclass(frozen=True)
class _Meta:
    """A conversation's meta item as read (``ver is None``: there is none)."""

    ver: int | None = None
    gen: int | None = None
    first: int = _SEQ0
    end: int = _SEQ0
    next_gen: int | None = None
    expires: int | None = None
    floor: int | None = None
    lease: int | None = None
    chunked: bool = False
    epoch: str | None = None
    ops: tuple[str, ...] = ()

    def live(self, now: float) -> bool:
        """Whether the conversation has a generation and has not expired."""
        return self.gen is not None and not (self.expires is not None and self.expires <= now)

    def count(self, now: float) -> int:
        return self.end - self.first if self.live(now) else 0

    def same(self, other: _Meta) -> bool:
        """Whether both describe the same state (the expiry floor aside)."""
        return replace(self, floor=None) == replace(other, floor=None)

    def same_version(self, other: _Meta) -> bool:
        """Whether both are one version of one meta item (so they name the same items).

        Expiry, floor and lease change without a new version; everything else does not.
        Meta items without an epoch (written by older releases) never match.
        """
        mine = (self.epoch, self.ver, self.gen, self.first, self.end)
        theirs = (other.epoch, other.ver, other.gen, other.first, other.end)
        return self.epoch is not None and mine == theirs

    def window(self, now: float, offset: int, limit: int | None) -> tuple[int, int]:
        """Return the positions ``[lo, hi)`` of ``messages[offset:][:limit]``."""
        count = self.count(now)
        lo, _, _ = slice(offset, None).indices(count)
        return lo, count if limit is None else min(count, lo + limit)


@dataclass(frozen=True)
class _Plan:
    """The new state of a conversation after a change, and the item writes that make it.

    ``puts`` are heads to write at sequence numbers of generation ``gen``; ``deletes`` are
    sequence numbers of the meta's generation to remove; ``dropped`` are heads of removed
    chunked messages whose chunk items go once the change is committed; ``chunked`` says
    that a new generation written elsewhere (not in ``puts``) holds chunked messages.
    """

    gen: int
    first: int
    end: int
    puts: dict[int, Head]
    deletes: list[int]
    new_gen: bool = False
    fresh: bool = False
    appends_only: bool = False
    dropped: list[Head] = field(default_factory=list)
    chunked: bool = False


def _fits(puts: list[dict[str, Any]], deletes: list[dict[str, Any]]) -> bool:
    """Whether the writes fit one transaction beside the meta update."""
    size = sum(item_size(p["Put"]["Item"]) for p in puts)
    return len(puts) + len(deletes) <= _TXN_MESSAGES and size <= MAX_TRANSACTION_BYTES


class NativeLayout:
    """Reads and writes conversations in the recommended item-per-message layout.

    Args:
        table: The table and its settings.
        sk: The sort key attribute.
        keys_index: Whether the table has the :data:`KEYS_INDEX` index.
    """

    def __init__(self, table: Table, sk: str, *, keys_index: bool) -> None:
        self.t = table
        self.sk = sk
        self.keys_index = keys_index
        # The last meta item seen (read or committed) of each conversation: a hint for
        # planning writes and batching reads, never trusted without a condition or a check.
        self.seen: LruCache[str, _Meta] = LruCache(CACHED_CONVERSATIONS)

    # -- items -----------------------------------------------------------------------------

    def _key(self, key: str, sk: int) -> dict[str, Any]:
        return {self.t.pk: text(key), self.sk: num(sk)}

    def _message_item(
        self, key: str, gen: int, seq: int, head: Head, now: float, ver: int
    ) -> dict[str, Any]:
        """Return a message item; ``ver`` is the meta version whose commit makes it visible."""
        item = {
            **self._key(key, gen * _GEN_SPAN + seq),
            _MESSAGE: text(head.text),
            _WRITTEN: num(ver),
        }
        if head.chunked:
            item[PARTS] = num(head.parts)
            item[PARTS_ID] = num(head.token)
        if self.t.ttl is not None:
            item[self.t.ttl_attribute] = num(self.t.expiry(now, 2))
        return item

    def _chunk_items(self, key: str, fresh: Fresh) -> list[dict[str, Any]]:
        items = []
        for sort_key, part in fresh.sort_keys_and_texts():
            item = {**self._key(key, sort_key), _MESSAGE: text(part)}
            if fresh.expires is not None:
                item[self.t.ttl_attribute] = num(fresh.expires)
            items.append(item)
        return items

    def _encode(self, key: str, messages: Sequence[str]) -> tuple[list[Head], Fresh]:
        """Return the heads and chunks of new messages, sized for this key's items.

        Raises:
            PayloadTooLargeError: A message is over the size the layout stores (nothing is
                written).
        """
        # The largest item beside its text: a chunked head (or a chunk) with an expiry.
        widest = Head("", 999, 1 << 101)
        template = self._message_item(key, 10**21, _SEQ0, widest, 0.0, 10**20)
        template[self.sk] = num(-(10**40))
        template[self.t.ttl_attribute] = num(10**12)
        return encode(key, messages, MAX_ITEM_BYTES - item_size(template))

    def _parse_head(self, item: dict[str, Any], *, with_text: bool = True) -> Head | None:
        """Return the head an item holds, or None if it is not a readable message item."""
        value = item.get(_MESSAGE, {}).get("S")
        if value is None:
            if with_text:
                return None
            value = ""
        if PARTS not in item:
            return Head(value)
        try:
            parts, token = int(item[PARTS]["N"]), int(item[PARTS_ID]["N"])
        except (KeyError, TypeError, ValueError):
            return None
        return Head(value, parts, token) if valid(parts, token) else None

    def _read_meta(self, key: str) -> _Meta:
        reply = self.t.call(
            "read a conversation", "get_item", Key=self._key(key, _META_SK), ConsistentRead=True
        )
        return self._learn(key, self._parse_meta(key, reply.get("Item")))

    def _learn(self, key: str, meta: _Meta) -> _Meta:
        """Remember ``meta`` as the latest state seen of ``key``; return it."""
        self.seen.put(key, meta)
        return meta

    def _parse_meta(self, key: str, item: dict[str, Any] | None) -> _Meta:
        if item is None:
            return _Meta()
        try:

            def opt(name: str) -> int | None:
                return int(item[name]["N"]) if name in item else None

            gen = opt(_GEN)
            return _Meta(
                ver=opt(_VER),
                gen=gen,
                first=int(item[_FIRST]["N"]) if gen is not None else _SEQ0,
                end=int(item[_END]["N"]) if gen is not None else _SEQ0,
                next_gen=opt(_NEXT),
                expires=opt(self.t.ttl_attribute),
                floor=opt(_FLOOR),
                lease=opt(_LEASE),
                chunked=_CHUNKED in item,
                epoch=item[_EPOCH]["S"] if _EPOCH in item else None,
                ops=tuple(item.get(slot, {}).get("S", "") for slot in _OPS),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(
                f"the meta item of key {key!r} in DynamoDB table {self.t.name!r} is unreadable: "
                f"{item!r:.200} ({corrupt_data_remedy(key)})",
                key=key,
            ) from exc

    def _query_range(
        self, key: str, lo: int, hi: int, *, limit: int, projection: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Return the first ``limit`` items with sort keys ``lo <= sk <= hi``, in order.

        A range of at most :data:`_READ_BY_KEY` sort keys is read by key (BatchGetItem).
        """
        if hi - lo < min(limit, _READ_BY_KEY):
            return self._get_range(key, [], lo, hi, projection)[1]
        e = Expr()
        params: dict[str, Any] = {
            "KeyConditionExpression": (
                f"{e.n(self.t.pk)} = {e.v(text(key))} AND "
                f"{e.n(self.sk)} BETWEEN {e.v(num(lo))} AND {e.v(num(hi))}"
            ),
            "ConsistentRead": True,
            "Limit": limit,
        }
        if projection:
            params["ProjectionExpression"] = ", ".join(e.n(a) for a in projection)
        params.update(e.params())
        out: list[dict[str, Any]] = []
        while True:
            page = self.t.call("read messages", "query", **params)
            out.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page or len(out) >= limit:
                return out
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            params["Limit"] = limit - len(out)

    def _get_range(
        self, key: str, extra: list[int], lo: int, hi: int, projection: Sequence[str] = ()
    ) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
        """Read the items at sort keys ``extra`` and ``lo <= sk <= hi`` by key, in one request.

        Returns the ``extra`` items found (by sort key) and the range's, in order.
        """
        params: dict[str, Any] = {}
        if projection:
            e = Expr()
            names = dict.fromkeys((self.sk, *projection))
            params["ProjectionExpression"] = ", ".join(e.n(a) for a in names)
            params.update(e.params())
        wanted = [*extra, *range(lo, hi + 1)]
        items = self.t.batch_get("read messages", [self._key(key, sk) for sk in wanted], **params)
        by_sk = {int(item[self.sk]["N"]): item for item in items}
        found = {sk: by_sk.pop(sk) for sk in extra if sk in by_sk}
        return found, [by_sk[sk] for sk in sorted(by_sk)]

    def _rows(self, items: list[dict[str, Any]], base: int, *, with_text: bool = True
    ) -> list[tuple[int, Head | None, int]]:  # fmt: skip
        """Return ``(seq, head, written)`` of message items of the generation at ``base``."""
        out: list[tuple[int, Head | None, int]] = []
        for item in items:
            head = self._parse_head(item, with_text=with_text)
            try:
                written = int(item.get(_WRITTEN, {}).get("N", 0))
            except (TypeError, ValueError):
                head, written = None, 0
            out.append((int(item[self.sk]["N"]) - base, head, written))
        return out

    def _query(
        self, key: str, gen: int, lo: int, hi: int, *, with_text: bool = True
    ) -> list[tuple[int, Head | None, int]]:
        """Return ``(seq, head, written)`` of the items ``lo <= seq < hi`` of a generation.

        ``written`` is the meta version that made the item's content visible (0 for items
        written before items carried it). ``with_text=False`` reads only what locates chunks
        (the heads' text is ``""``).
        """
        base = gen * _GEN_SPAN
        projection = () if with_text else (self.sk, PARTS, PARTS_ID, _WRITTEN)
        items = self._query_range(
            key, base + lo, base + hi - 1, limit=hi - lo, projection=projection
        )
        return self._rows(items, base, with_text=with_text)

    def _read_chunks(self, key: str, head: Head) -> list[str] | None:
        """Return parts ``1 ..`` of a chunked message, or None if any is missing."""
        keys = head.chunk_sort_keys()
        found: dict[int, str | None] = {}
        for item in self._query_range(key, keys[-1], keys[0], limit=len(keys)):
            found[part_of(int(item[self.sk]["N"]), head.token)] = item.get(_MESSAGE, {}).get("S")
        texts = [found.get(part) for part in range(1, head.parts)]
        return None if any(t is None for t in texts) else [t for t in texts if t is not None]

    def _join(self, key: str, head: Head) -> str | None:
        """Return the whole message JSON of a head, or None if a chunk is missing."""
        if not head.chunked:
            return head.text
        rest = self._read_chunks(key, head)
        return None if rest is None else head.text + "".join(rest)

    # -- reads -----------------------------------------------------------------------------

    def _read_meta_and_window(
        self, key: str, seen: _Meta, offset: int, limit: int | None
    ) -> tuple[_Meta, tuple[int, int, list[tuple[int, Head | None, int]]] | None]:
        """Read the meta item and the window ``seen`` names, in one request if it is short.

        Returns the meta and, when it is still ``seen``'s version, the window ``(lo, hi)``
        with its items as :meth:`_query` returns them (None otherwise).
        """
        lo, hi = seen.window(time.time(), offset, limit)
        if seen.gen is None or seen.epoch is None or not 0 < hi - lo <= _READ_BY_KEY:
            return self._read_meta(key), None
        base = seen.gen * _GEN_SPAN
        found, items = self._get_range(
            key, [_META_SK], base + seen.first + lo, base + seen.first + hi - 1
        )
        meta = self._learn(key, self._parse_meta(key, found.get(_META_SK)))
        if not meta.same_version(seen):
            return meta, None
        return meta, (lo, hi, self._rows(items, base))

    def _read_range(
        self, key: str, offset: int, limit: int | None, meta: _Meta | None = None,
        *, whole: bool = True, seen: _Meta | None = None,
    ) -> tuple[_Meta, int, list[Head], list[str]]:  # fmt: skip
        """Return the meta, first position, heads and JSON of ``messages[offset:][:limit]``.

        The JSON list is empty unless ``whole``; everything comes from one meta state.
        Without ``meta``, the meta item is read first, together with the window ``seen``
        names when there is one (see :meth:`_read_meta_and_window`).

        An item written after the meta's version (an insert or delete inside moved it, or
        a pop and an append reused its position) or missing makes the read start over from
        the meta: only when the meta is unchanged is a missing item corrupt data.

        Raises:
            CorruptDataError: A message item or chunk is missing or unreadable while the meta
                is unchanged.
            BackendUnavailableError: The conversation changed during every attempt.
        """
        for attempt in range(self.t.attempts):
            ahead = None
            if meta is None and seen is not None:
                meta, ahead = self._read_meta_and_window(key, seen, offset, limit)
            meta = meta or self._read_meta(key)
            seen = None
            lo, hi = meta.window(time.time(), offset, limit)
            if lo >= hi:
                return meta, lo, [], []
            assert meta.gen is not None
            if ahead is not None and ahead[:2] == (lo, hi):
                got = ahead[2]
            else:
                got = self._query(key, meta.gen, meta.first + lo, meta.first + hi)
            expected = list(range(meta.first + lo, meta.first + hi))
            heads = [h for _, h, _ in got if h is not None]
            later = any(written > (meta.ver or 0) for _, _, written in got)
            texts: list[str | None] = []
            if [seq for seq, _, _ in got] == expected and len(heads) == len(expected) and not later:
                texts = [self._join(key, h) for h in heads] if whole else []
                if all(t is not None for t in texts):
                    return meta, lo, heads, [t for t in texts if t is not None]
            again = self._read_meta(key)
            if again.same(meta) and later:
                # Items of a change whose meta update is not visible yet: wait for it.
                backoff(attempt)
                continue
            if again.same(meta):
                seqs = {seq: head for seq, head, _ in got}
                missing = [s - meta.first for s in expected if seqs.get(s) is None]
                bad = missing[0] if missing else lo + texts.index(None)
                raise CorruptDataError(
                    f"message at key {key!r} position {bad} is missing, has no "
                    f"string {_MESSAGE!r} attribute or lost a chunk in DynamoDB table "
                    f"{self.t.name!r} ({corrupt_data_remedy(key)})",
                    key=key,
                    position=bad,
                )
            meta = again
        raise BackendUnavailableError(f"key {key!r} kept changing while being read")

    def get(self, key: str, offset: int, limit: int | None) -> list[tuple[int, str]]:
        """Return ``(position, JSON)`` of ``messages[offset:][:limit]``."""
        meta, lo, _, messages = self._read_range(key, offset, limit, seen=self.seen.get(key))
        self._refresh(key, meta)
        return list(enumerate(messages, start=lo))

    def count(self, key: str) -> int:
        """Return the number of messages."""
        meta = self._read_meta(key)
        count = meta.count(time.time())
        self._refresh(key, meta)
        return count

    def _refresh(self, key: str, meta: _Meta) -> None:
        """Slide a live conversation's expiry to now + ttl after a read (``refresh_on_read``).

        Only a conversation that still exists, has an expiry and has not expired is touched;
        ``Ver`` stays as it is, so no writer has to retry. Losing the condition (the
        conversation changed, expired or went meanwhile) leaves it as it is.
        """
        if not self.t.refresh_on_read or self.t.ttl is None:
            return
        now = time.time()
        if not meta.live(now) or meta.expires is None or self.t.expiry(now) <= meta.expires:
            return
        self._prepare(key, meta, now)  # message items must outlive the new expiry
        e = Expr()
        ttl, floor, new = e.n(self.t.ttl_attribute), e.n(_FLOOR), e.v(num(self.t.expiry(now)))
        with contextlib.suppress(ConflictError):
            self.t.conditional(
                "refresh the expiry", "update_item", Key=self._key(key, _META_SK),
                UpdateExpression=f"SET {ttl} = {new}",
                ConditionExpression=(
                    f"attribute_exists({e.n(_GEN)}) AND {ttl} > {e.v({'N': f'{time.time():.6f}'})}"
                    f" AND {ttl} < {new} AND {floor} >= {new}"
                ),
                **e.params(),
            )  # fmt: skip

    def iter_key_pages(self) -> Iterator[list[str]]:
        """Yield pages of live keys from the sparse keys index (never reading messages).

        Raises:
            ConfigurationError: The table has no keys index.
        """
        if not self.keys_index:
            raise ConfigurationError(
                f"DynamoDB table {self.t.name!r} has no global secondary index {KEYS_INDEX!r} "
                f"(hash key {_KEY_COPY!r}), which get_keys() reads; create the table with "
                "DynamoDBChatStore.create_table() or add the index"
            )
        e = Expr()
        params: dict[str, Any] = {
            "IndexName": KEYS_INDEX,
            "ProjectionExpression": f"{e.n(_KEY_COPY)}, {e.n(self.t.ttl_attribute)}",
            **e.params(),
        }
        while True:
            page = self.t.call("list keys", "scan", **params)
            now = time.time()
            keys = []
            for item in page.get("Items", []):
                expires = item.get(self.t.ttl_attribute, {}).get("N")
                if expires is None or int(expires) > now:
                    keys.append(item[_KEY_COPY]["S"])
            yield keys
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # -- the write machinery ---------------------------------------------------------------

    def _guard(self, e: Expr, meta: _Meta, now: float) -> str:
        """Return the condition that the meta item is still exactly ``meta`` (and not leased).

        The epoch tells a meta item written anew after a delete (its ``Ver`` starts over)
        from the one ``meta`` was read from. The generation and range are checked too,
        although every change moves ``Ver``: a meta item damaged by hand then fails the
        condition, and a write planned on a remembered meta raises what it holds instead
        of overwriting it.
        """
        if meta.ver is None:
            version = f"attribute_not_exists({e.n(_VER)})"
        else:
            epoch = (
                f"attribute_not_exists({e.n(_EPOCH)})"
                if meta.epoch is None
                else f"{e.n(_EPOCH)} = {e.v(text(meta.epoch))}"
            )
            version = f"{e.n(_VER)} = {e.v(num(meta.ver))} AND {epoch}"
            if meta.gen is not None:
                fields = ((_GEN, meta.gen), (_FIRST, meta.first), (_END, meta.end))
                version += "".join(f" AND {e.n(n)} = {e.v(num(v))}" for n, v in fields)
        lease = e.n(_LEASE)
        return f"{version} AND (attribute_not_exists({lease}) OR {lease} < {e.v(num(int(now)))})"

    def _new_gen(self, meta: _Meta, now: float) -> int:
        base = meta.next_gen if meta.next_gen is not None else meta.gen
        return int(now * 1000) if base is None else base + 1

    def _meta_action(
        self, key: str, meta: _Meta, plan: _Plan, now: float, tag: str,
        lease_id: str | None = None,
    ) -> tuple[dict[str, Any], _Meta]:  # fmt: skip
        """Return the transaction action that commits ``plan`` over ``meta``, and the result.

        The action asks for the meta item as it is when its condition fails (see
        :class:`ConflictError`), so a writer that lost learns the winner's state, and a
        writer whose own commit's reply was lost finds its ``tag`` there. The tag goes to
        the slot ``Op{new Ver mod 16}``: the meta keeps the ids of its last 16 changes.
        Removing the last message leaves the meta item without a generation (a tombstone
        keeping the ids) rather than deleting it.
        """
        e = Expr()
        if lease_id is None:
            condition = self._guard(e, meta, now)
        else:
            condition = (
                f"{e.n(_LEASE_ID)} = {e.v(text(lease_id))} AND "
                f"{e.n(_VER)} = {e.v(num(meta.ver or 0))}"
            )
        target = self._key(key, _META_SK)
        on_failure = {"ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        ver = (meta.ver or 0) + 1
        slot = ver % RECENT_OPS
        ops = list(meta.ops or ("",) * RECENT_OPS)
        ops[slot] = tag
        if plan.end == plan.first:
            return self._tombstone_action(key, e, meta, condition, now, slot, tuple(ops))
        sets = [
            f"{e.n(_OPS[slot])} = {e.v(text(tag))}",
            f"{e.n(_GEN)} = {e.v(num(plan.gen))}",
            f"{e.n(_FIRST)} = {e.v(num(plan.first))}",
            f"{e.n(_END)} = {e.v(num(plan.end))}",
            f"{e.n(_VER)} = {e.v(num(ver))}",
            f"{e.n(_KEY_COPY)} = {e.v(text(key))}",
        ]
        removes = [e.n(_LEASE), e.n(_LEASE_ID)]
        epoch = meta.epoch
        if epoch is None:  # created now (or written before meta items had an epoch)
            epoch = uuid.uuid4().hex
            sets.append(f"{e.n(_EPOCH)} = {e.v(text(epoch))}")
        if plan.new_gen:
            sets.append(f"{e.n(_NEXT)} = {e.v(num(plan.gen))}")
        # Sticky for a generation: replaces and expiry extensions then look for chunks.
        chunked = (
            plan.chunked
            or any(h.chunked for h in plan.puts.values())
            or (meta.chunked and plan.gen == meta.gen)
        )
        if chunked:
            sets.append(f"{e.n(_CHUNKED)} = {e.v(num(1))}")
        else:
            removes.append(e.n(_CHUNKED))
        expires, floor = None, meta.floor
        if self.t.ttl is not None:
            expires = self.t.expiry(now)
            sets.append(f"{e.n(self.t.ttl_attribute)} = {e.v(num(expires))}")
            if plan.fresh or meta.floor is None:
                floor = self._fresh_floor(now)
                sets.append(f"{e.n(_FLOOR)} = {e.v(num(floor))}")
        else:
            removes.append(e.n(self.t.ttl_attribute))
        expression = f"SET {', '.join(sets)} REMOVE {', '.join(removes)}"
        action = {
            "Key": target,
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            **on_failure,
        }
        after = _Meta(
            ver=ver, gen=plan.gen, first=plan.first, end=plan.end,
            next_gen=plan.gen if plan.new_gen else meta.next_gen, expires=expires,
            floor=floor, chunked=chunked, epoch=epoch, ops=tuple(ops),
        )  # fmt: skip
        return {"Update": {**action, **e.params()}}, after

    def _tombstone_action(
        self, key: str, e: Expr, meta: _Meta, condition: str, now: float, slot: int,
        ops: tuple[str, ...],
    ) -> tuple[dict[str, Any], _Meta]:  # fmt: skip
        """Return the action that empties the conversation, keeping its meta item's ids.

        The meta item loses its generation, range and key copy (so reads find nothing and
        ``get_keys`` skips it) and keeps ``Ver``, ``Epoch``, ``NextGen`` and the recent
        operation ids, with an expiry: the conversation's ttl, else a day.
        """
        epoch = meta.epoch or uuid.uuid4().hex
        seconds = self.t.ttl if self.t.ttl is not None else _TOMBSTONE_SECONDS
        expires = math.ceil(now + seconds)
        sets = [
            f"{e.n(_OPS[slot])} = {e.v(text(ops[slot]))}",
            f"{e.n(_VER)} = {e.v(num((meta.ver or 0) + 1))}",
            f"{e.n(_EPOCH)} = {e.v(text(epoch))}",
            f"{e.n(self.t.ttl_attribute)} = {e.v(num(expires))}",
        ]
        gone = (_GEN, _FIRST, _END, _KEY_COPY, _CHUNKED, _FLOOR, _LEASE, _LEASE_ID)
        action = {
            "Key": self._key(key, _META_SK),
            "UpdateExpression": f"SET {', '.join(sets)} REMOVE {', '.join(map(e.n, gone))}",
            "ConditionExpression": condition,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        after = _Meta(ver=(meta.ver or 0) + 1, next_gen=meta.next_gen, expires=expires,
                      epoch=epoch, ops=ops)  # fmt: skip
        return {"Update": {**action, **e.params()}}, after

    def _fresh_floor(self, now: float) -> int:
        # Items written from now on expire at now + 2 ttl; the margin covers writers that
        # took their clock reading a little before this one.
        assert self.t.ttl is not None
        return self.t.expiry(now, 2) - self.t.ttl // 2

    def _chunked_heads(self, key: str, meta: _Meta) -> list[Head]:
        """Return the chunked heads of the meta's generation (reading no message text)."""
        if not meta.chunked or meta.gen is None or meta.first == meta.end:
            return []
        got = self._query(key, meta.gen, meta.first, meta.end, with_text=False)
        return [h for _, h, _ in got if h is not None and h.chunked]

    def _prepare(self, key: str, meta: _Meta, now: float) -> _Meta:
        """Make every message item outlive the expiry this change will set (sliding TTL).

        Message items (chunks included) carry an expiry of their own (so DynamoDB removes
        abandoned ones) that must never come before the conversation's. Rather than
        rewriting every item on every change, items get ``now + 2 ttl`` and the meta a
        ``Floor`` below all of them; only when the new expiry would pass the floor are the
        items' expiries pushed forward, at most once per half ttl.
        """
        if self.t.ttl is None or not meta.live(now) or meta.count(now) == 0:
            return meta
        if meta.floor is not None and meta.floor >= self.t.expiry(now):
            return meta
        assert meta.gen is not None
        target = self.t.expiry(now, 2)
        sort_keys = [meta.gen * _GEN_SPAN + seq for seq in range(meta.first, meta.end)]
        for head in self._chunked_heads(key, meta):
            sort_keys.extend(head.chunk_sort_keys())
        for sort_key in sort_keys:
            e = Expr()
            ttl = e.n(self.t.ttl_attribute)
            mark = e.v(num(target))
            with contextlib.suppress(ConflictError):  # gone, or already later
                self.t.conditional(
                    "extend message expiry", "update_item",
                    Key=self._key(key, sort_key),
                    UpdateExpression=f"SET {ttl} = {mark}",
                    ConditionExpression=(
                        f"attribute_exists({e.n(self.t.pk)}) AND "
                        f"(attribute_not_exists({ttl}) OR {ttl} < {mark})"
                    ),
                    **e.params(),
                )  # fmt: skip
        floor = self._fresh_floor(now)
        e = Expr()
        with contextlib.suppress(ConflictError):  # the conversation is gone
            self.t.conditional(
                "record message expiry", "update_item",
                Key=self._key(key, _META_SK),
                UpdateExpression=f"SET {e.n(_FLOOR)} = {e.v(num(floor))}",
                ConditionExpression=f"attribute_exists({e.n(_VER)})",
                **e.params(),
            )  # fmt: skip
        return replace(meta, floor=floor)

    def _write_chunks(self, key: str, fresh: Fresh, now: float, what: str) -> None:
        """Store new chunk items outside the transaction, once (unreferenced until committed).

        They expire a ttl later than the message items of this attempt would, so retries
        within that time reuse them; a commit later than that writes them again.
        """
        if not fresh.rest:
            return
        if fresh.written and (fresh.expires is None or fresh.expires >= self.t.expiry(now, 2)):
            return
        fresh.expires = None if self.t.ttl is None else self.t.expiry(now, 3)
        requests = [{"PutRequest": {"Item": i}} for i in self._chunk_items(key, fresh)]
        self.t.batch_write(what, requests)
        fresh.written = True

    def _apply(
        self, key: str, meta: _Meta, plan: _Plan, now: float, what: str, fresh: Fresh,
        op: Op, tag: str,
    ) -> None:  # fmt: skip
        """Commit a plan tagged ``tag``: one transaction when it fits, else the large paths.

        Raises:
            ConflictError: The meta changed since it was read.
        """
        ver = (meta.ver or 0) + 1  # what the meta action sets
        puts = [
            {"Put": {"Item": self._message_item(key, plan.gen, seq, head, now, ver)}}
            for seq, head in sorted(plan.puts.items())
        ]
        deletes = [
            {"Delete": {"Key": self._key(key, (meta.gen or 0) * _GEN_SPAN + seq)}}
            for seq in plan.deletes
        ]
        meta_action = self._meta_action(key, meta, plan, now, tag)
        if fresh.rest and not fresh.written:
            fresh.expires = None if self.t.ttl is None else self.t.expiry(now, 2)
            chunks = [{"Put": {"Item": i}} for i in self._chunk_items(key, fresh)]
            if _fits(puts + chunks, deletes):
                self._commit(key, what, meta_action, [*puts, *chunks, *deletes])
                return
        self._write_chunks(key, fresh, now, what)
        if _fits(puts, deletes):
            self._commit(key, what, meta_action, [*puts, *deletes])
        elif plan.appends_only:
            self._leased_append(key, meta, plan, puts, now, what, tag)
        elif not puts:
            # Only removals: once the meta no longer covers them they are invisible.
            gen, seqs = meta.gen or 0, plan.deletes
            op.after(lambda: self._delete_seqs(key, gen, seqs, what))
            self._commit(key, what, meta_action)
        else:
            raise _TooLargeError

    def _commit(
        self, key: str, what: str, meta_action: tuple[dict[str, Any], _Meta],
        others: Sequence[dict[str, Any]] = (),
    ) -> None:  # fmt: skip
        """Run the meta action (and ``others``) as one transaction; remember the result."""
        action, after = meta_action
        self.t.transact(what, [action, *others])
        self._learn(key, after)

    def _leased_append(
        self,
        key: str,
        meta: _Meta,
        plan: _Plan,
        puts: list[dict[str, Any]],
        now: float,
        what: str,
        tag: str,
    ) -> None:
        # More items than one transaction holds. Take a lease on the meta (other writers
        # wait), write the items beyond the visible range, then extend the range and drop the
        # lease in one conditional update: readers see all of the batch or none of it.
        lease_id = uuid.uuid4().hex
        e = Expr()
        sets = [
            f"{e.n(_LEASE)} = {e.v(num(int(now) + _LEASE_SECONDS))}",
            f"{e.n(_LEASE_ID)} = {e.v(text(lease_id))}",
            f"{e.n(_VER)} = {e.v(num((meta.ver or 0) + 1))}",
        ]
        try:
            self.t.conditional(
                what, "update_item", Key=self._key(key, _META_SK),
                UpdateExpression=f"SET {', '.join(sets)}",
                ConditionExpression=self._guard(e, meta, now),
                ReturnValuesOnConditionCheckFailure="ALL_OLD", **e.params(),
            )  # fmt: skip
        except ConflictError as lost:
            # botocore resent the update after it took the lease: the lease is ours.
            held = lost.current or {}
            if held.get(_LEASE_ID) != text(lease_id) or held.get(_VER) != num((meta.ver or 0) + 1):
                raise
        leased = replace(meta, ver=(meta.ver or 0) + 1)
        written = num((leased.ver or 0) + 1)  # the version the final update commits
        try:
            self.t.batch_write(
                what,
                [{"PutRequest": {"Item": {**p["Put"]["Item"], _WRITTEN: written}}} for p in puts],
            )
            self._commit(key, what, self._meta_action(key, leased, plan, now, tag, lease_id))
        except BaseException:
            self._release_lease(key, lease_id)  # a no-op once the commit took it
            raise

    def _release_lease(self, key: str, lease_id: str) -> None:
        e = Expr()
        # Best effort: the lease expires on its own, and the original error is what matters.
        with contextlib.suppress(Exception):
            self.t.conditional(
                "release a lease", "update_item", Key=self._key(key, _META_SK),
                UpdateExpression=f"REMOVE {e.n(_LEASE)}, {e.n(_LEASE_ID)}",
                ConditionExpression=f"{e.n(_LEASE_ID)} = {e.v(text(lease_id))}",
                **e.params(),
            )  # fmt: skip

    def _delete_seqs(self, key: str, gen: int, seqs: Sequence[int], what: str) -> None:
        requests = [{"DeleteRequest": {"Key": self._key(key, gen * _GEN_SPAN + s)}} for s in seqs]
        self.t.batch_write(what, requests)

    def _delete_chunks(self, key: str, heads: Sequence[Head], what: str) -> None:
        requests = [
            {"DeleteRequest": {"Key": self._key(key, sort_key)}}
            for head in heads
            for sort_key in head.chunk_sort_keys()
        ]
        self.t.batch_write(what, requests)

    def _retried_change(self, key: str, what: str, step: Any, fresh: Fresh | None = None) -> Any:
        """Run :meth:`_change` with one :class:`Op`, again after transport failures."""
        op = Op()
        return self.t.retried(lambda: self._change(key, what, step, op, fresh), mutates=True)

    def _change(self, key: str, what: str, step: Any, op: Op, fresh: Fresh | None = None) -> Any:
        """Run ``step(meta, now) -> (plan | None, result)`` until its commit wins the race.

        The first attempt plans on the meta this store last saw, when that is safe (see
        :meth:`_plannable`): its commit is conditioned on that state, so planning on it
        costs no read. When that commit loses, the next attempt plans at once on the meta
        item the failed condition returned; a step that changes nothing is trusted only
        on a meta read for it. Later losses back off and read the meta again.

        ``fresh`` holds the chunks of the messages the change adds; the chunks of messages
        it removes are deleted once it is committed.

        Every commit carries a tag of ``op`` (see :class:`Op`). A meta item that records
        one, read or returned by a failed condition, means an earlier attempt of this
        call won (its reply was lost, or botocore resent the commit after it landed): the
        call then returns that attempt's result instead of changing anything again.

        Raises:
            BackendUnavailableError: Every attempt lost a race with other writers.
        """
        adding = fresh or Fresh()
        known = self.seen.get(key)
        for attempt in range(self.t.attempts):
            now = time.time()
            if known is not None and self._plannable(known, now):
                meta, hinted = known, True
            else:
                meta, hinted = self._read_meta(key), False
                if (won := op.committed(meta.ops)) is not None:
                    return op.finish(won)
                meta = self._prepare(key, meta, now)
            known = None
            try:
                plan, result = step(meta, now)
                if plan is None and hinted:
                    continue  # nothing to do on the remembered state: read the real one
                if plan is not None:
                    tag = op.tag(result)
                    if plan.dropped:
                        op.after(functools.partial(self._delete_chunks, key, plan.dropped, what))
                    try:
                        self._apply(key, meta, plan, now, what, adding, op, tag)
                    except _TooLargeError:
                        self._rewrite(key, meta, plan, now, what, op, tag)
                    return op.finish(op.latest)
                return result
            except ConflictError as lost:
                winner = self._winner(key, lost)
                if winner is not None and (won := op.committed(winner.ops)) is not None:
                    return op.finish(won)
                if hinted:
                    known = winner
                else:
                    backoff(attempt)
        raise BackendUnavailableError(
            f"could not {what} for key {key!r}: {self.t.attempts} attempts lost races with "
            "concurrent writers"
        )

    def _plannable(self, meta: _Meta, now: float) -> bool:
        """Whether a write may plan on ``meta`` as remembered, without reading the meta item.

        Its commit is conditioned on ``Ver`` and ``Epoch``, but expiry, floor and lease
        change without a new version: reads slide the expiry, :meth:`_prepare` raises the
        floor. So only states those cannot mislead qualify: no conversation, a removed one
        (a meta item without a generation: nothing slides or leases it), or a live,
        unleased one whose message items already outlive the expiry a change would set.
        """
        if meta.ver is None or (meta.gen is None and meta.epoch is not None):
            return True
        if meta.epoch is None or meta.lease is not None or not meta.live(now):
            return False
        ttl = self.t.ttl
        return ttl is None or (meta.floor is not None and meta.floor >= self.t.expiry(now))

    def _winner(self, key: str, lost: ConflictError) -> _Meta | None:
        """Return (and remember) the meta item a lost commit's condition was checked against.

        Raises:
            CorruptDataError: That meta item is damaged.
        """
        item = lost.current
        if item is None or item.get(self.sk) != num(_META_SK):
            return None
        return self._learn(key, self._parse_meta(key, item))

    # -- writes ----------------------------------------------------------------------------

    def append(self, key: str, messages: Sequence[str]) -> None:
        """Append messages atomically (one transaction, or a leased batch when large).

        Raises:
            PayloadTooLargeError: A message is over the size the layout stores (nothing is
                written).
        """
        heads, fresh = self._encode(key, messages)

        def step(meta: _Meta, now: float) -> tuple[_Plan, None]:
            return self._append_plan(meta, now, heads), None

        self._retried_change(key, "append messages", step, fresh)

    def insert(self, key: str, idx: int, message: str) -> None:
        """Insert like ``list.insert``: shift the shorter side of the conversation.

        Moved messages are rewritten as their head items only (chunks stay where they are).
        """
        heads, fresh = self._encode(key, [message])
        new = heads[0]

        def step(meta: _Meta, now: float) -> tuple[_Plan, None]:
            count = meta.count(now)
            pos = min(max(idx + count, 0) if idx < 0 else idx, count)
            if pos == count or not meta.live(now):
                return self._append_plan(meta, now, [new]), None
            assert meta.gen is not None
            if pos <= count - pos:  # move the head one step down
                moved, _ = self._read_items(key, meta, 0, pos, whole=False)
                puts = {meta.first - 1 + i: m for i, m in enumerate(moved)}
                puts[meta.first - 1 + pos] = new
                return _Plan(meta.gen, meta.first - 1, meta.end, puts, []), None
            moved, _ = self._read_items(key, meta, pos, count, whole=False)
            puts = {meta.first + pos + 1 + i: m for i, m in enumerate(moved)}
            puts[meta.first + pos] = new
            return _Plan(meta.gen, meta.first, meta.end + 1, puts, []), None

        self._retried_change(key, "insert a message", step, fresh)

    def _append_plan(self, meta: _Meta, now: float, heads: Sequence[Head]) -> _Plan:
        if meta.live(now):
            assert meta.gen is not None
            puts = {meta.end + i: h for i, h in enumerate(heads)}
            return _Plan(meta.gen, meta.first, meta.end + len(heads), puts, [],
                         fresh=meta.count(now) == 0, appends_only=True)  # fmt: skip
        gen = self._new_gen(meta, now)
        puts = {_SEQ0 + i: h for i, h in enumerate(heads)}
        return _Plan(gen, _SEQ0, _SEQ0 + len(heads), puts, [], True, True, True)

    def _read_items(
        self, key: str, meta: _Meta, lo: int, hi: int, *, whole: bool
    ) -> tuple[list[Head], list[str]]:
        """Return the heads (and when ``whole`` the JSON) at ``[lo, hi)`` of exactly this meta.

        Raises:
            ConflictError: The conversation changed meanwhile (the caller starts over).
        """
        read_meta, _, heads, messages = self._read_range(key, lo, hi - lo, meta, whole=whole)
        if not read_meta.same(meta):
            raise ConflictError("changed while reading")
        return heads, messages

    def _read_removed(
        self, key: str, meta: _Meta, lo: int, hi: int
    ) -> tuple[list[Head], list[str | Unreadable]]:
        """Return what positions ``[lo, hi)`` of exactly this meta hold, for a removal.

        Unlike a read, an item that is missing, holds no string message or lost a chunk
        does not stop a removal (corrupt data must stay deletable): it comes back as
        :class:`Unreadable`. The heads are those of chunked messages (their chunks go too).

        Raises:
            ConflictError: The conversation changed meanwhile (the caller starts over).
        """
        assert meta.gen is not None
        base = meta.gen * _GEN_SPAN
        items = self._query_range(
            key, base + meta.first + lo, base + meta.first + hi - 1, limit=hi - lo
        )
        by_seq = {int(item[self.sk]["N"]) - base: item for item in items}
        heads: list[Head] = []
        found: list[str | Unreadable] = []
        for seq in range(meta.first + lo, meta.first + hi):
            item = by_seq.get(seq)
            head = None if item is None else self._parse_head(item)
            text = None if head is None else self._join(key, head)
            if head is not None and head.chunked:
                heads.append(head)
            if text is not None:
                found.append(text)
            elif item is None:
                found.append(Unreadable(None, "the item is missing"))
            else:
                stored = item.get(_MESSAGE, {})
                data = stored.get("S", stored.get("B"))
                why = (
                    "a chunk is missing"
                    if head is not None
                    else (f"its {_MESSAGE!r} attribute is not a string")
                )
                found.append(Unreadable(data if isinstance(data, str | bytes) else None, why))
        if any(isinstance(f, Unreadable) for f in found) and not self._read_meta(key).same(meta):
            raise ConflictError("changed while reading")
        return heads, found

    def delete_at(self, key: str, idx: int) -> tuple[int, str | Unreadable] | None:
        """Remove the message at ``idx``; return ``(position, JSON)`` or None if out of range.

        A corrupt message is removed all the same and returned as :class:`Unreadable`.
        """

        def step(
            meta: _Meta, now: float
        ) -> tuple[_Plan | None, tuple[int, str | Unreadable] | None]:
            count = meta.count(now)
            if not -count <= idx < count:
                return None, None
            assert meta.gen is not None
            pos = idx % count
            chunked, (removed,) = self._read_removed(key, meta, pos, pos + 1)
            if pos == count - 1 or pos == 0:
                first = meta.first + (1 if pos == 0 and count > 1 else 0)
                end = meta.end - (0 if pos == 0 and count > 1 else 1)
                plan = _Plan(meta.gen, first, end, {}, [meta.first + pos])
            elif pos < count - pos:  # move the head one step up
                moved, _ = self._read_items(key, meta, 0, pos, whole=False)
                puts = {meta.first + 1 + i: m for i, m in enumerate(moved)}
                plan = _Plan(meta.gen, meta.first + 1, meta.end, puts, [meta.first])
            else:
                moved, _ = self._read_items(key, meta, pos + 1, count, whole=False)
                puts = {meta.first + pos + i: m for i, m in enumerate(moved)}
                plan = _Plan(meta.gen, meta.first, meta.end - 1, puts, [meta.end - 1])
            return replace(plan, dropped=chunked), (pos, removed)

        result: tuple[int, str | Unreadable] | None = self._retried_change(
            key, "delete a message", step
        )
        return result

    def delete_oldest(self, key: str, n: int) -> list[str | Unreadable]:
        """Remove and return the first ``n`` messages (fewer if shorter; corrupt ones too)."""

        def step(meta: _Meta, now: float) -> tuple[_Plan | None, list[str | Unreadable]]:
            k = min(n, meta.count(now))
            if k <= 0:
                return None, []
            assert meta.gen is not None
            dropped, removed = self._read_removed(key, meta, 0, k)
            deletes = list(range(meta.first, meta.first + k))
            first = meta.first + k if k < meta.count(now) else meta.end
            return _Plan(meta.gen, first, meta.end, {}, deletes, dropped=dropped), removed

        result: list[str | Unreadable] = self._retried_change(
            key, "delete the oldest messages", step
        )
        return result

    def delete_all(self, key: str) -> list[str | Unreadable] | None:
        """Remove the conversation; return its messages (corrupt ones too), or None."""

        def step(meta: _Meta, now: float) -> tuple[_Plan | None, list[str | Unreadable] | None]:
            count = meta.count(now)
            if count == 0:
                return None, None
            assert meta.gen is not None
            dropped, removed = self._read_removed(key, meta, 0, count)
            deletes = list(range(meta.first, meta.end))
            return _Plan(meta.gen, meta.end, meta.end, {}, deletes, dropped=dropped), removed

        result: list[str | Unreadable] | None = self._retried_change(
            key, "delete a conversation", step
        )
        return result

    def replace(self, key: str, messages: Sequence[str]) -> None:
        """Replace the conversation atomically (``[]`` removes it).

        Raises:
            PayloadTooLargeError: A message is over the size the layout stores (nothing is
                written).
        """
        if not messages:
            self.delete_all(key)
            return
        heads, fresh = self._encode(key, messages)

        def step(meta: _Meta, now: float) -> tuple[_Plan, None]:
            gen = self._new_gen(meta, now)
            puts = {_SEQ0 + i: h for i, h in enumerate(heads)}
            old = list(range(meta.first, meta.end)) if meta.gen is not None else []
            dropped = self._chunked_heads(key, meta)
            plan = _Plan(gen, _SEQ0, _SEQ0 + len(heads), puts, old, True, True, dropped=dropped)
            return plan, None

        self._retried_change(key, "replace a conversation", step, fresh)

    def _rewrite(
        self, key: str, meta: _Meta, plan: _Plan, now: float, what: str, op: Op, tag: str
    ) -> None:
        """Commit a plan too large for one transaction by writing a whole new generation.

        The new generation is reserved on the meta first (so no other writer uses it), its
        items are written while invisible, then the meta flips to it conditionally and the
        old generation is deleted. Chunks stay where they are: the new heads point at them.

        The new items are removed again when the flip is known to have failed; when its
        outcome is unknown they stay (a retry that finds ``tag`` on the meta uses them).

        Raises:
            ConflictError: The meta changed since it was read.
        """
        if plan.new_gen:
            final = [plan.puts[s] for s in range(plan.first, plan.end)]
        else:
            assert meta.gen is not None
            current, _ = self._read_items(key, meta, 0, meta.count(now), whole=False)
            by_seq = dict(zip(range(meta.first, meta.end), current, strict=True))
            by_seq.update(plan.puts)
            final = [by_seq[s] for s in range(plan.first, plan.end)]
        e = Expr()
        sets = [
            f"{e.n(_NEXT)} = if_not_exists({e.n(_NEXT)}, {e.v(num(int(now * 1000)))}) + "
            f"{e.v(num(1))}",
            f"{e.n(_VER)} = {e.v(num((meta.ver or 0) + 1))}",
        ]
        reply = self.t.conditional(
            what, "update_item", Key=self._key(key, _META_SK),
            UpdateExpression=f"SET {', '.join(sets)}",
            ConditionExpression=self._guard(e, meta, now),
            ReturnValues="ALL_NEW", **e.params(),
        )  # fmt: skip
        gen = int(reply["Attributes"][_NEXT]["N"])
        reserved = replace(meta, ver=(meta.ver or 0) + 1, next_gen=gen)
        flip_ver = (reserved.ver or 0) + 1
        requests = [
            {"PutRequest": {"Item": self._message_item(key, gen, _SEQ0 + i, h, now, flip_ver)}}
            for i, h in enumerate(final)
        ]
        new_items = range(_SEQ0, _SEQ0 + len(final))
        try:
            self.t.batch_write(what, requests)
        except BaseException:
            self._delete_seqs(key, gen, new_items, "clean up")
            raise
        if meta.gen is not None:
            old_gen, old = meta.gen, range(meta.first, meta.end)
            op.after(lambda: self._delete_seqs(key, old_gen, old, what))
        flip = _Plan(gen, _SEQ0, _SEQ0 + len(final), {}, [], new_gen=False, fresh=True,
                     chunked=any(h.chunked for h in final))  # fmt: skip
        try:
            self._commit(key, what, self._meta_action(key, reserved, flip, now, tag))
        except ConflictError as lost:
            # Without the item (a transaction conflict) only a read tells whether a resent
            # flip was ours: the new items are then the conversation.
            now_meta = self._winner(key, lost) or self._read_meta(key)
            if op.committed(now_meta.ops) is None:
                self._delete_seqs(key, gen, new_items, "clean up")
            raise


class _TooLargeError(Exception):
    """A plan mixing additions and removals does not fit one transaction."""
