"""The native layout's meta item: what it holds, how it is read, and the writes that commit.

See :mod:`._native` for the layout. Here: the table definition, :class:`Meta` (a meta item
as read), :class:`Edit` (a change's new state and item writes), and :class:`MetaItems`, the
base of the layout, which reads meta items and builds the conditional actions that commit
a change on one.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from llama_index.storage.chat_store.core import CorruptDataError
from llama_index.storage.chat_store.core.backend import Plan, corrupt_data_remedy
from llama_index.storage.chat_store.core.cache import LruCache
from llama_index.storage.chat_store.dynamodb._chunks import Head
from llama_index.storage.chat_store.dynamodb._expr import Expr, num, text
from llama_index.storage.chat_store.dynamodb._sdk import (
    MAX_TRANSACTION_BYTES,
    MAX_TRANSACTION_ITEMS,
    RECENT_OPS,
    LostRaceError,
    Table,
    item_size,
)

KEYS_INDEX = "ChatStoreKeys"
"""The sparse global secondary index over meta items that ``get_keys`` scans."""
KEY_COPY = "ChatStoreKey"
CATALOG_INDEX = "ChatStoreCatalog"
"""The sparse global secondary index over meta items that ``list_conversations`` queries:
partition key :data:`LISTED` (one value), sort key :data:`ORDER` (the key, in key order)."""
LISTED, LISTED_VALUE, ORDER = "ChatStoreListed", "1", "ChatStoreOrder"
CREATED, UPDATED, METADATA = "Created", "Updated", "Metadata"
MAX_ORDER_BYTES = 1024
"""DynamoDB's limit on a sort key value, of an index too: :data:`ORDER` holds the key cut to it."""
MESSAGE = "Message"
GEN, FIRST, END, VER, NEXT = "Gen", "First", "End", "Ver", "NextGen"
FLOOR, LEASE, LEASE_ID, CHUNKED = "Floor", "Lease", "LeaseId", "Chunked"
WRITTEN, EPOCH = "Written", "Epoch"
OPS = tuple(f"Op{i}" for i in range(RECENT_OPS))
# Without a ttl, the meta item left by removing a conversation (it keeps the ids of the
# changes that removed it) expires after a day, by DynamoDB's TTL where it is enabled.
TOMBSTONE_SECONDS = 86_400
META_SK = 0
GEN_SPAN = 10**13
SEQ0 = 5 * 10**12
LEASE_SECONDS = 60
# Transaction actions besides the messages: the meta update.
TXN_MESSAGES = MAX_TRANSACTION_ITEMS - 1
CACHED_CONVERSATIONS = 4096
"""How many conversations' last-seen meta items a store remembers."""
# Ranges of up to this many items are read by key (BatchGetItem, which also takes the meta
# item) rather than by Query: one request instead of two for short conversations and
# windows, at one read unit per item (a Query sums small items into 4 KB units).
READ_BY_KEY = 25


def order_of(key: str) -> str:
    """Return the :data:`ORDER` value of ``key``: its first 1,024 UTF-8 bytes (whole characters).

    A prefix of the key, so the index orders keys as their UTF-8 bytes do, except that keys
    sharing their first 1,024 bytes tie (the listing orders those itself).
    """
    data = key.encode()
    return key if len(data) <= MAX_ORDER_BYTES else data[:MAX_ORDER_BYTES].decode(errors="ignore")


def catalog_index_definition() -> dict[str, Any]:
    """Return the :data:`CATALOG_INDEX` definition (keys only: the rest is read by key)."""
    return {
        "IndexName": CATALOG_INDEX,
        "KeySchema": [
            {"AttributeName": LISTED, "KeyType": "HASH"},
            {"AttributeName": ORDER, "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "KEYS_ONLY"},
    }


CATALOG_ATTRIBUTES = [
    {"AttributeName": LISTED, "AttributeType": "S"},
    {"AttributeName": ORDER, "AttributeType": "S"},
]


def native_table_definition(table: str, pk: str, sk: str, ttl_attribute: str) -> dict[str, Any]:
    """Return CreateTable parameters for the recommended table (on-demand billing)."""
    return {
        "TableName": table,
        "AttributeDefinitions": [
            {"AttributeName": pk, "AttributeType": "S"},
            {"AttributeName": sk, "AttributeType": "N"},
            {"AttributeName": KEY_COPY, "AttributeType": "S"},
            *CATALOG_ATTRIBUTES,
        ],
        "KeySchema": [
            {"AttributeName": pk, "KeyType": "HASH"},
            {"AttributeName": sk, "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": KEYS_INDEX,
                "KeySchema": [{"AttributeName": KEY_COPY, "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": [ttl_attribute]},
            },
            catalog_index_definition(),
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


@dataclass(frozen=True)
class Meta:
    """A conversation's meta item as read (``ver is None``: there is none)."""

    ver: int | None = None
    gen: int | None = None
    first: int = SEQ0
    end: int = SEQ0
    next_gen: int | None = None
    expires: int | None = None
    floor: int | None = None
    lease: int | None = None
    chunked: bool = False
    epoch: str | None = None
    ops: tuple[str, ...] = ()
    created: int | None = None
    """When the conversation began, epoch ms (None: begun before meta items kept it)."""
    updated: int | None = None
    """Its last change of messages or metadata, epoch ms (None: none since then)."""
    metadata: tuple[tuple[str, str], ...] = ()
    """Its metadata as ``(name, compact JSON)`` pairs, sorted by name."""

    def live(self, now: float) -> bool:
        """Whether the conversation has a generation and has not expired."""
        return self.gen is not None and not (self.expires is not None and self.expires <= now)

    def count(self, now: float) -> int:
        return self.end - self.first if self.live(now) else 0

    def same(self, other: Meta) -> bool:
        """Whether both describe the same state (the expiry floor aside)."""
        return replace(self, floor=None) == replace(other, floor=None)

    def same_version(self, other: Meta) -> bool:
        """Whether both are one version of one meta item (so they name the same items).

        Expiry, floor and lease change without a new version; everything else does not.
        Meta items without an epoch (written by older releases) never match.
        """
        mine = (self.epoch, self.ver, self.gen, self.first, self.end)
        theirs = (other.epoch, other.ver, other.gen, other.first, other.end)
        return self.epoch is not None and mine == theirs


@dataclass(frozen=True)
class Edit:
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
    metadata: dict[str, str] | None = None
    """The conversation's new metadata ``{name: JSON}`` (None: unchanged)."""


def fits(puts: list[dict[str, Any]], deletes: list[dict[str, Any]]) -> bool:
    """Whether the writes fit one transaction beside the meta update."""
    size = sum(item_size(p["Put"]["Item"]) for p in puts)
    return len(puts) + len(deletes) <= TXN_MESSAGES and size <= MAX_TRANSACTION_BYTES


class MetaItems:
    """Reads a conversation's meta item and builds the actions that commit on it."""

    def __init__(self, table: Table, sk: str, *, keys_index: bool, catalog_index: bool) -> None:
        self.t = table
        self.sk = sk
        self.keys_index = keys_index
        self.catalog_index = catalog_index
        # The last meta item seen (read or committed) of each conversation: a hint for
        # planning writes and batching reads, never trusted without a condition or a check.
        self.seen: LruCache[str, Meta] = LruCache(CACHED_CONVERSATIONS)

    def _key(self, key: str, sk: int) -> dict[str, Any]:
        return {self.t.pk: text(key), self.sk: num(sk)}

    def _read_meta(self, key: str) -> Plan[Meta]:
        reply = yield self.t.call(
            "read a conversation", "get_item", Key=self._key(key, META_SK), ConsistentRead=True
        )
        return self._learn(key, self._parse_meta(key, reply.get("Item")))

    def _learn(self, key: str, meta: Meta) -> Meta:
        """Remember ``meta`` as the latest state seen of ``key``; return it."""
        self.seen.put(key, meta)
        return meta

    def _parse_meta(self, key: str, item: dict[str, Any] | None) -> Meta:
        if item is None:
            return Meta()
        try:

            def opt(name: str) -> int | None:
                return int(item[name]["N"]) if name in item else None

            gen = opt(GEN)
            return Meta(
                ver=opt(VER),
                gen=gen,
                first=int(item[FIRST]["N"]) if gen is not None else SEQ0,
                end=int(item[END]["N"]) if gen is not None else SEQ0,
                next_gen=opt(NEXT),
                expires=opt(self.t.ttl_attribute),
                floor=opt(FLOOR),
                lease=opt(LEASE),
                chunked=CHUNKED in item,
                epoch=item[EPOCH]["S"] if EPOCH in item else None,
                ops=tuple(item.get(slot, {}).get("S", "") for slot in OPS),
                created=opt(CREATED),
                updated=opt(UPDATED),
                metadata=tuple(
                    sorted((name, value["S"]) for name, value in item[METADATA]["M"].items())
                )
                if METADATA in item
                else (),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(
                f"the meta item of key {key!r} in DynamoDB table {self.t.name!r} is unreadable: "
                f"{item!r:.200} ({corrupt_data_remedy(key)})",
                key=key,
            ) from exc

    def _plannable(self, meta: Meta, now: float) -> bool:
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

    def _winner(self, key: str, lost: LostRaceError) -> Meta | None:
        """Return (and remember) the meta item a lost commit's condition was checked against.

        Raises:
            CorruptDataError: That meta item is damaged.
        """
        item = lost.current
        if item is None or item.get(self.sk) != num(META_SK):
            return None
        return self._learn(key, self._parse_meta(key, item))

    def _guard(self, e: Expr, meta: Meta, now: float) -> str:
        """Return the condition that the meta item is still exactly ``meta`` (and not leased).

        The epoch tells a meta item written anew after a delete (its ``Ver`` starts over)
        from the one ``meta`` was read from. The generation and range are checked too,
        although every change moves ``Ver``: a meta item damaged by hand then fails the
        condition, and a write planned on a remembered meta raises what it holds instead
        of overwriting it.
        """
        if meta.ver is None:
            version = f"attribute_not_exists({e.n(VER)})"
        else:
            epoch = (
                f"attribute_not_exists({e.n(EPOCH)})"
                if meta.epoch is None
                else f"{e.n(EPOCH)} = {e.v(text(meta.epoch))}"
            )
            version = f"{e.n(VER)} = {e.v(num(meta.ver))} AND {epoch}"
            if meta.gen is not None:
                fields = ((GEN, meta.gen), (FIRST, meta.first), (END, meta.end))
                version += "".join(f" AND {e.n(n)} = {e.v(num(v))}" for n, v in fields)
        lease = e.n(LEASE)
        return f"{version} AND (attribute_not_exists({lease}) OR {lease} < {e.v(num(int(now)))})"

    def _new_gen(self, meta: Meta, now: float) -> int:
        base = meta.next_gen if meta.next_gen is not None else meta.gen
        return int(now * 1000) if base is None else base + 1

    def _meta_action(
        self, key: str, meta: Meta, plan: Edit, now: float, tag: str,
        lease_id: str | None = None,
    ) -> tuple[dict[str, Any], Meta]:  # fmt: skip
        """Return the transaction action that commits ``plan`` over ``meta``, and the result.

        The action asks for the meta item as it is when its condition fails (see
        :class:`LostRaceError`), so a writer that lost learns the winner's state, and a
        writer whose own commit's reply was lost finds its ``tag`` there. The tag goes to
        the slot ``Op{new Ver mod 16}``: the meta keeps the ids of its last 16 changes.
        """
        e = Expr()
        if lease_id is None:
            condition = self._guard(e, meta, now)
        else:
            condition = (
                f"{e.n(LEASE_ID)} = {e.v(text(lease_id))} AND "
                f"{e.n(VER)} = {e.v(num(meta.ver or 0))}"
            )
        ver = (meta.ver or 0) + 1
        ops = list(meta.ops or ("",) * RECENT_OPS)
        ops[ver % RECENT_OPS] = tag
        epoch = meta.epoch or uuid.uuid4().hex
        values = {OPS[ver % RECENT_OPS]: text(tag), VER: num(ver)}
        if meta.epoch is None:  # created now (or written before meta items had an epoch)
            values[EPOCH] = text(epoch)
        base = Meta(ver=ver, next_gen=meta.next_gen, epoch=epoch, ops=tuple(ops))
        if plan.end == plan.first:
            removes, after = self._emptied(base, now, values)
        else:
            removes, after = self._committed(key, meta, plan, now, values, base)
        sets = ", ".join(f"{e.n(name)} = {e.v(value)}" for name, value in values.items())
        action = {
            "Key": self._key(key, META_SK),
            "UpdateExpression": f"SET {sets} REMOVE {', '.join(map(e.n, removes))}",
            "ConditionExpression": condition,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        return {"Update": {**action, **e.params()}}, after

    def _emptied(self, base: Meta, now: float, values: dict[str, Any]) -> tuple[list[str], Meta]:
        """Add what removing the last message sets; return what it removes, and the result.

        The meta item stays (a tombstone keeping the ids) without its generation, range and
        key copy (so reads find nothing and ``get_keys`` skips it), with ``Ver``,
        ``Epoch``, ``NextGen`` and the recent operation ids, expiring with the
        conversation's ttl, else after a day.
        """
        seconds = self.t.ttl if self.t.ttl is not None else TOMBSTONE_SECONDS
        expires = math.ceil(now + seconds)
        values.update({EPOCH: text(str(base.epoch)), self.t.ttl_attribute: num(expires)})
        gone = [GEN, FIRST, END, KEY_COPY, CHUNKED, FLOOR, LEASE, LEASE_ID]
        gone += [LISTED, ORDER, CREATED, UPDATED, METADATA]  # the catalog entry goes too
        return gone, replace(base, expires=expires)

    def _committed(
        self, key: str, meta: Meta, plan: Edit, now: float, values: dict[str, Any], base: Meta
    ) -> tuple[list[str], Meta]:
        """Add what committing ``plan`` over ``meta`` sets; return what it removes, the result."""
        values.update(
            {GEN: num(plan.gen), FIRST: num(plan.first), END: num(plan.end), KEY_COPY: text(key)}
        )
        removes = [LEASE, LEASE_ID]
        stamped = self._stamp(key, meta, plan, now, values, removes)
        if plan.new_gen:
            values[NEXT] = num(plan.gen)
        # Sticky for a generation: replaces and expiry extensions then look for chunks.
        chunked = (
            plan.chunked
            or any(h.chunked for h in plan.puts.values())
            or (meta.chunked and plan.gen == meta.gen)
        )
        if chunked:
            values[CHUNKED] = num(1)
        else:
            removes.append(CHUNKED)
        expires, floor = None, meta.floor
        if self.t.ttl is None:
            removes.append(self.t.ttl_attribute)
        else:
            expires = self.t.expiry(now)
            values[self.t.ttl_attribute] = num(expires)
            if plan.fresh or floor is None:
                floor = self._fresh_floor(now)
                values[FLOOR] = num(floor)
        after = replace(
            base, gen=plan.gen, first=plan.first, end=plan.end, expires=expires, floor=floor,
            next_gen=plan.gen if plan.new_gen else meta.next_gen, chunked=chunked, **stamped,
        )  # fmt: skip
        return removes, after

    def _stamp(
        self, key: str, meta: Meta, plan: Edit, now: float, values: dict[str, Any],
        removes: list[str],
    ) -> dict[str, Any]:  # fmt: skip
        """Add the catalog entry's changes to a commit of ``plan``; return its new fields.

        Every commit lists the key in :data:`CATALOG_INDEX` and stamps ``Updated`` (this
        client's clock, epoch ms); one that begins the conversation (none live before) also
        stamps ``Created`` and drops the metadata of the conversation that was there.
        """
        stamp = int(now * 1000)
        values.update({LISTED: text(LISTED_VALUE), ORDER: text(order_of(key)), UPDATED: num(stamp)})
        created, metadata = meta.created, meta.metadata
        if meta.count(now) == 0:
            values[CREATED] = num(stamp)
            created, metadata = stamp, ()
        if plan.metadata is not None:
            metadata = tuple(sorted(plan.metadata.items()))
        if metadata != meta.metadata or meta.count(now) == 0:  # else left as it is
            if metadata:
                values[METADATA] = {"M": {name: text(value) for name, value in metadata}}
            else:
                removes.append(METADATA)
        return {"created": created, "updated": stamp, "metadata": metadata}

    def _fresh_floor(self, now: float) -> int:
        # Items written from now on expire at now + 2 ttl; the margin covers writers that
        # took their clock reading a little before this one.
        assert self.t.ttl is not None
        return self.t.expiry(now, 2) - self.t.ttl // 2
