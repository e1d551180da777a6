"""The recommended layout: one item per message plus one meta item per conversation.

Table: partition key ``SessionId`` (S), numeric sort key. In a conversation's partition:

* the meta item at sort key 0: ``Gen`` (generation), ``First``/``End`` (the visible sequence
  numbers are ``First <= seq < End``, so position ``p`` is ``First + p``), ``Ver`` (bumped by
  every change; every write is conditioned on it), ``NextGen`` (generation counter),
  ``ChatStoreKey`` (a copy of the key, only while the conversation holds messages: the hash
  key of the sparse index ``get_keys`` scans), the TTL attribute (the conversation's expiry),
  ``Floor`` (no message item expires before it) and, during a large append, a lease;
* message items at sort key ``Gen * 10**13 + seq``, attribute ``Message`` = the message JSON.

Appends are one TransactWriteItems (meta update conditioned on ``Ver`` + puts), retried when
they lose a race. A replace writes a new generation and flips ``Gen`` conditionally, so readers
(who read only the meta's generation and range) see the old or the new list, never a mix; the
old generation is deleted afterwards. A reader that finds items missing because a writer
removed them meanwhile re-reads the meta and tries again.

With ``refresh_on_read``, a read of a live conversation slides its expiry with one conditional
update of the meta item that leaves ``Ver`` alone (writers are not disturbed) and never
re-creates or revives a deleted or expired conversation.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    ConfigurationError,
    CorruptDataError,
    PayloadTooLargeError,
)
from llama_index.storage.chat_store.dynamodb._client import (
    MAX_ITEM_BYTES,
    MAX_TRANSACTION_BYTES,
    MAX_TRANSACTION_ITEMS,
    ConflictError,
    Table,
    item_size,
    with_retries,
)
from llama_index.storage.chat_store.dynamodb._expr import Expr, num, text

__all__ = ["KEYS_INDEX", "NativeLayout", "native_table_definition"]

KEYS_INDEX = "ChatStoreKeys"
"""The sparse global secondary index over meta items that ``get_keys`` scans."""
_KEY_COPY = "ChatStoreKey"
_MESSAGE = "Message"
_GEN, _FIRST, _END, _VER, _NEXT = "Gen", "First", "End", "Ver", "NextGen"
_FLOOR, _LEASE, _LEASE_ID = "Floor", "Lease", "LeaseId"
_META_SK = 0
_GEN_SPAN = 10**13
_SEQ0 = 5 * 10**12
_LEASE_SECONDS = 60
# Transaction actions besides the messages: the meta update.
_TXN_MESSAGES = MAX_TRANSACTION_ITEMS - 1


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

    def live(self, now: float) -> bool:
        """Whether the conversation has a generation and has not expired."""
        return self.gen is not None and not (self.expires is not None and self.expires <= now)

    def count(self, now: float) -> int:
        return self.end - self.first if self.live(now) else 0

    def same(self, other: _Meta) -> bool:
        """Whether both describe the same state (the expiry floor aside)."""
        return replace(self, floor=None) == replace(other, floor=None)


@dataclass(frozen=True)
class _Plan:
    """The new state of a conversation after a change, and the item writes that make it."""

    gen: int
    first: int
    end: int
    puts: dict[int, str]
    deletes: list[int]
    new_gen: bool = False
    fresh: bool = False
    appends_only: bool = False


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

    # -- items -----------------------------------------------------------------------------

    def _key(self, key: str, sk: int) -> dict[str, Any]:
        return {self.t.pk: text(key), self.sk: num(sk)}

    def _message_item(
        self, key: str, gen: int, seq: int, message: str, now: float
    ) -> dict[str, Any]:
        item = {**self._key(key, gen * _GEN_SPAN + seq), _MESSAGE: text(message)}
        if self.t.ttl is not None:
            item[self.t.ttl_attribute] = num(self.t.expiry(now, 2))
        return item

    def check_sizes(self, key: str, messages: Sequence[str], start: int = 0) -> None:
        """Raise :class:`PayloadTooLargeError` before any write if a message cannot fit an item."""
        for i, message in enumerate(messages):
            size = item_size(self._message_item(key, 10**21, _SEQ0, message, 0.0))
            if size > MAX_ITEM_BYTES:
                raise PayloadTooLargeError(
                    f"message at position {start + i} of key {key!r} needs a {size}-byte "
                    f"DynamoDB item; items hold at most {MAX_ITEM_BYTES} bytes (400 KB). "
                    "Nothing was written."
                )

    def _read_meta(self, key: str) -> _Meta:
        reply = self.t.call(
            "read a conversation", "get_item", Key=self._key(key, _META_SK), ConsistentRead=True
        )
        item = reply.get("Item")
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(
                f"the meta item of key {key!r} in DynamoDB table {self.t.name!r} is unreadable: "
                f"{item!r:.200}"
            ) from exc

    def _query(self, key: str, gen: int, lo: int, hi: int) -> list[tuple[int, str | None]]:
        """Return ``(seq, message JSON)`` of the items ``lo <= seq < hi`` of a generation."""
        e = Expr()
        params: dict[str, Any] = {
            "KeyConditionExpression": (
                f"{e.n(self.t.pk)} = {e.v(text(key))} AND {e.n(self.sk)} BETWEEN "
                f"{e.v(num(gen * _GEN_SPAN + lo))} AND {e.v(num(gen * _GEN_SPAN + hi - 1))}"
            ),
            "ConsistentRead": True,
            "Limit": hi - lo,
            **e.params(),
        }
        out: list[tuple[int, str | None]] = []
        while True:
            page = self.t.call("read messages", "query", **params)
            for item in page.get("Items", []):
                value = item.get(_MESSAGE, {})
                out.append((int(item[self.sk]["N"]) - gen * _GEN_SPAN, value.get("S")))
            if "LastEvaluatedKey" not in page or len(out) >= hi - lo:
                return out
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            params["Limit"] = hi - lo - len(out)

    # -- reads -----------------------------------------------------------------------------

    def _read_range(
        self, key: str, offset: int, limit: int | None, meta: _Meta | None = None
    ) -> tuple[_Meta, int, list[str]]:
        """Return the meta, the first position and ``messages[offset:][:limit]``, consistently.

        Raises:
            CorruptDataError: A message item is missing or unreadable while the meta is unchanged.
        """
        for _ in range(self.t.attempts):
            meta = meta or self._read_meta(key)
            count = meta.count(time.time())
            lo, _, _ = slice(offset, None).indices(count)
            hi = count if limit is None else min(count, lo + limit)
            if lo >= hi:
                return meta, lo, []
            assert meta.gen is not None
            got = self._query(key, meta.gen, meta.first + lo, meta.first + hi)
            expected = list(range(meta.first + lo, meta.first + hi))
            if [seq for seq, _ in got] == expected and all(m is not None for _, m in got):
                return meta, lo, [m for _, m in got if m is not None]
            again = self._read_meta(key)
            if again.same(meta):
                seqs = dict(got)
                bad = next(s for s in expected if seqs.get(s) is None)
                raise CorruptDataError(
                    f"message at key {key!r} position {bad - meta.first} is missing or has no "
                    f"string {_MESSAGE!r} attribute in DynamoDB table {self.t.name!r}"
                )
            meta = again
        raise BackendUnavailableError(f"key {key!r} kept changing while being read")

    def get(self, key: str, offset: int, limit: int | None) -> list[tuple[int, str]]:
        """Return ``(position, JSON)`` of ``messages[offset:][:limit]``."""
        meta, lo, messages = self._read_range(key, offset, limit)
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
        version = (
            f"attribute_not_exists({e.n(_VER)})"
            if meta.ver is None
            else f"{e.n(_VER)} = {e.v(num(meta.ver))}"
        )
        lease = e.n(_LEASE)
        return f"{version} AND (attribute_not_exists({lease}) OR {lease} < {e.v(num(int(now)))})"

    def _new_gen(self, meta: _Meta, now: float) -> int:
        base = meta.next_gen if meta.next_gen is not None else meta.gen
        return int(now * 1000) if base is None else base + 1

    def _meta_action(
        self, key: str, meta: _Meta, plan: _Plan, now: float, lease_id: str | None = None
    ) -> dict[str, Any]:
        e = Expr()
        if lease_id is None:
            condition = self._guard(e, meta, now)
        else:
            condition = (
                f"{e.n(_LEASE_ID)} = {e.v(text(lease_id))} AND "
                f"{e.n(_VER)} = {e.v(num(meta.ver or 0))}"
            )
        target = self._key(key, _META_SK)
        if plan.end == plan.first:
            return {"Delete": {"Key": target, "ConditionExpression": condition, **e.params()}}
        sets = [
            f"{e.n(_GEN)} = {e.v(num(plan.gen))}",
            f"{e.n(_FIRST)} = {e.v(num(plan.first))}",
            f"{e.n(_END)} = {e.v(num(plan.end))}",
            f"{e.n(_VER)} = {e.v(num((meta.ver or 0) + 1))}",
            f"{e.n(_KEY_COPY)} = {e.v(text(key))}",
        ]
        removes = [e.n(_LEASE), e.n(_LEASE_ID)]
        if plan.new_gen:
            sets.append(f"{e.n(_NEXT)} = {e.v(num(plan.gen))}")
        if self.t.ttl is not None:
            sets.append(f"{e.n(self.t.ttl_attribute)} = {e.v(num(self.t.expiry(now)))}")
            if plan.fresh or meta.floor is None:
                sets.append(f"{e.n(_FLOOR)} = {e.v(num(self._fresh_floor(now)))}")
        else:
            removes.append(e.n(self.t.ttl_attribute))
        expression = f"SET {', '.join(sets)} REMOVE {', '.join(removes)}"
        return {
            "Update": {
                "Key": target,
                "UpdateExpression": expression,
                "ConditionExpression": condition,
                **e.params(),
            }
        }

    def _fresh_floor(self, now: float) -> int:
        # Items written from now on expire at now + 2 ttl; the margin covers writers that
        # took their clock reading a little before this one.
        assert self.t.ttl is not None
        return self.t.expiry(now, 2) - self.t.ttl // 2

    def _prepare(self, key: str, meta: _Meta, now: float) -> _Meta:
        """Make every message item outlive the expiry this change will set (sliding TTL).

        Message items carry an expiry of their own (so DynamoDB removes abandoned ones)
        that must never come before the conversation's. Rather than rewriting every item on
        every change, items get ``now + 2 ttl`` and the meta a ``Floor`` below all of them;
        only when the new expiry would pass the floor are the items' expiries pushed
        forward, at most once per half ttl.
        """
        if self.t.ttl is None or not meta.live(now) or meta.count(now) == 0:
            return meta
        if meta.floor is not None and meta.floor >= self.t.expiry(now):
            return meta
        assert meta.gen is not None
        target = self.t.expiry(now, 2)
        for seq in range(meta.first, meta.end):
            e = Expr()
            ttl = e.n(self.t.ttl_attribute)
            mark = e.v(num(target))
            with contextlib.suppress(ConflictError):  # gone, or already later
                self.t.conditional(
                    "extend message expiry", "update_item",
                    Key=self._key(key, meta.gen * _GEN_SPAN + seq),
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

    def _apply(self, key: str, meta: _Meta, plan: _Plan, now: float, what: str) -> None:
        """Commit a plan: one transaction when it fits, else the large-write paths.

        Raises:
            ConflictError: The meta changed since it was read.
        """
        puts = [
            {"Put": {"Item": self._message_item(key, plan.gen, seq, m, now)}}
            for seq, m in sorted(plan.puts.items())
        ]
        deletes = [
            {"Delete": {"Key": self._key(key, (meta.gen or 0) * _GEN_SPAN + seq)}}
            for seq in plan.deletes
        ]
        meta_action = self._meta_action(key, meta, plan, now)
        size = sum(item_size(p["Put"]["Item"]) for p in puts)
        if len(puts) + len(deletes) <= _TXN_MESSAGES and size <= MAX_TRANSACTION_BYTES:
            self.t.transact(what, [meta_action, *puts, *deletes])
        elif plan.appends_only:
            self._leased_append(key, meta, plan, puts, now, what)
        elif not puts:
            # Only removals: once the meta no longer covers them they are invisible.
            self.t.transact(what, [meta_action])
            self._delete_seqs(key, meta.gen or 0, plan.deletes, what)
        else:
            raise _TooLargeError

    def _leased_append(
        self,
        key: str,
        meta: _Meta,
        plan: _Plan,
        puts: list[dict[str, Any]],
        now: float,
        what: str,
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
        self.t.conditional(
            what, "update_item", Key=self._key(key, _META_SK),
            UpdateExpression=f"SET {', '.join(sets)}",
            ConditionExpression=self._guard(e, meta, now), **e.params(),
        )  # fmt: skip
        leased = replace(meta, ver=(meta.ver or 0) + 1)
        try:
            self.t.batch_write(what, [{"PutRequest": {"Item": p["Put"]["Item"]}} for p in puts])
            self.t.transact(what, [self._meta_action(key, leased, plan, now, lease_id)])
        except BaseException:
            self._release_lease(key, lease_id)
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

    def _change(self, key: str, what: str, step: Any) -> Any:
        """Run ``step(meta, now) -> (plan | None, result)`` until its commit wins the race."""

        def attempt() -> Any:
            now = time.time()
            meta = self._prepare(key, self._read_meta(key), now)
            plan, result = step(meta, now)
            if plan is not None:
                try:
                    self._apply(key, meta, plan, now, what)
                except _TooLargeError:
                    self._rewrite(key, meta, plan, now, what)
            return result

        return with_retries(attempt, limit=self.t.attempts, what=what, key=key)

    # -- writes ----------------------------------------------------------------------------

    def append(self, key: str, messages: Sequence[str]) -> None:
        """Append messages atomically (one transaction, or a leased batch when large)."""

        def step(meta: _Meta, now: float) -> tuple[_Plan, None]:
            return self._append_plan(meta, now, messages), None

        self.check_sizes(key, messages)
        self._change(key, "append messages", step)

    def insert(self, key: str, idx: int, message: str) -> None:
        """Insert like ``list.insert``: shift the shorter side of the conversation."""
        self.check_sizes(key, [message])

        def step(meta: _Meta, now: float) -> tuple[_Plan, None]:
            count = meta.count(now)
            pos = min(max(idx + count, 0) if idx < 0 else idx, count)
            if pos == count or not meta.live(now):
                return self._append_plan(meta, now, [message]), None
            assert meta.gen is not None
            if pos <= count - pos:  # move the head one step down
                moved = self._read_items(key, meta, 0, pos)
                puts = {meta.first - 1 + i: m for i, m in enumerate(moved)}
                puts[meta.first - 1 + pos] = message
                return _Plan(meta.gen, meta.first - 1, meta.end, puts, []), None
            moved = self._read_items(key, meta, pos, count)
            puts = {meta.first + pos + 1 + i: m for i, m in enumerate(moved)}
            puts[meta.first + pos] = message
            return _Plan(meta.gen, meta.first, meta.end + 1, puts, []), None

        self._change(key, "insert a message", step)

    def _append_plan(self, meta: _Meta, now: float, messages: Sequence[str]) -> _Plan:
        if meta.live(now):
            assert meta.gen is not None
            puts = {meta.end + i: m for i, m in enumerate(messages)}
            return _Plan(meta.gen, meta.first, meta.end + len(messages), puts, [],
                         fresh=meta.count(now) == 0, appends_only=True)  # fmt: skip
        gen = self._new_gen(meta, now)
        puts = {_SEQ0 + i: m for i, m in enumerate(messages)}
        return _Plan(gen, _SEQ0, _SEQ0 + len(messages), puts, [], True, True, True)

    def _read_items(self, key: str, meta: _Meta, lo: int, hi: int) -> list[str]:
        """Return messages at positions ``[lo, hi)`` of exactly this meta state.

        Raises:
            ConflictError: The conversation changed meanwhile (the caller starts over).
        """
        read_meta, _, messages = self._read_range(key, lo, hi - lo, meta)
        if not read_meta.same(meta):
            raise ConflictError("changed while reading")
        return messages

    def delete_at(self, key: str, idx: int) -> tuple[int, str] | None:
        """Remove the message at ``idx``; return ``(position, JSON)`` or None if out of range."""

        def step(meta: _Meta, now: float) -> tuple[_Plan | None, tuple[int, str] | None]:
            count = meta.count(now)
            if not -count <= idx < count:
                return None, None
            assert meta.gen is not None
            pos = idx % count
            if pos == count - 1 or pos == 0:
                removed = self._read_items(key, meta, pos, pos + 1)[0]
                first = meta.first + (1 if pos == 0 and count > 1 else 0)
                end = meta.end - (0 if pos == 0 and count > 1 else 1)
                plan = _Plan(meta.gen, first, end, {}, [meta.first + pos])
            elif pos < count - pos:  # move the head one step up
                moved = self._read_items(key, meta, 0, pos + 1)
                removed = moved[pos]
                puts = {meta.first + 1 + i: m for i, m in enumerate(moved[:pos])}
                plan = _Plan(meta.gen, meta.first + 1, meta.end, puts, [meta.first])
            else:
                moved = self._read_items(key, meta, pos, count)
                removed = moved[0]
                puts = {meta.first + pos + i: m for i, m in enumerate(moved[1:])}
                plan = _Plan(meta.gen, meta.first, meta.end - 1, puts, [meta.end - 1])
            return plan, (pos, removed)

        result: tuple[int, str] | None = self._change(key, "delete a message", step)
        return result

    def delete_oldest(self, key: str, n: int) -> list[str]:
        """Remove and return the first ``n`` messages (fewer if shorter)."""

        def step(meta: _Meta, now: float) -> tuple[_Plan | None, list[str]]:
            k = min(n, meta.count(now))
            if k <= 0:
                return None, []
            assert meta.gen is not None
            removed = self._read_items(key, meta, 0, k)
            deletes = list(range(meta.first, meta.first + k))
            first = meta.first + k if k < meta.count(now) else meta.end
            return _Plan(meta.gen, first, meta.end, {}, deletes), removed

        result: list[str] = self._change(key, "delete the oldest messages", step)
        return result

    def delete_all(self, key: str) -> list[str] | None:
        """Remove the conversation; return its messages, or None if it had none."""

        def step(meta: _Meta, now: float) -> tuple[_Plan | None, list[str] | None]:
            count = meta.count(now)
            if count == 0:
                return None, None
            assert meta.gen is not None
            removed = self._read_items(key, meta, 0, count)
            deletes = list(range(meta.first, meta.end))
            return _Plan(meta.gen, meta.end, meta.end, {}, deletes), removed

        result: list[str] | None = self._change(key, "delete a conversation", step)
        return result

    def replace(self, key: str, messages: Sequence[str]) -> None:
        """Replace the conversation atomically (``[]`` removes it)."""
        if not messages:
            self.delete_all(key)
            return
        self.check_sizes(key, messages)

        def step(meta: _Meta, now: float) -> tuple[_Plan, None]:
            gen = self._new_gen(meta, now)
            puts = {_SEQ0 + i: m for i, m in enumerate(messages)}
            old = list(range(meta.first, meta.end)) if meta.gen is not None else []
            return _Plan(gen, _SEQ0, _SEQ0 + len(messages), puts, old, True, True), None

        self._change(key, "replace a conversation", step)

    def _rewrite(self, key: str, meta: _Meta, plan: _Plan, now: float, what: str) -> None:
        """Commit a plan too large for one transaction by writing a whole new generation.

        The new generation is reserved on the meta first (so no other writer uses it), its
        items are written while invisible, then the meta flips to it conditionally and the
        old generation is deleted.

        Raises:
            ConflictError: The meta changed since it was read (the new items are removed again).
        """
        if plan.new_gen:
            final = [plan.puts[s] for s in range(plan.first, plan.end)]
        else:
            assert meta.gen is not None
            current = self._read_items(key, meta, 0, meta.count(now))
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
        requests = [
            {"PutRequest": {"Item": self._message_item(key, gen, _SEQ0 + i, m, now)}}
            for i, m in enumerate(final)
        ]
        try:
            self.t.batch_write(what, requests)
            flip = _Plan(gen, _SEQ0, _SEQ0 + len(final), {}, [], new_gen=False, fresh=True)
            self.t.transact(what, [self._meta_action(key, reserved, flip, now)])
        except BaseException:
            self._delete_seqs(key, gen, range(_SEQ0, _SEQ0 + len(final)), "clean up")
            raise
        if meta.gen is not None:
            self._delete_seqs(key, meta.gen, range(meta.first, meta.end), what)


class _TooLargeError(Exception):
    """A plan mixing additions and removals does not fit one transaction."""
