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
  change to version ``V`` in ``Op{V mod 16}``: see :class:`Op`), the catalog entry (times,
  metadata, catalog index keys: :mod:`._native_catalog`) and, during a large append, a
  lease. Removing the last message keeps the meta item without ``Gen``, ``First``, ``End``,
  ``ChatStoreKey`` and the catalog entry (so the tags outlive the conversation), expiring
  with the ttl or after a day;
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

import functools
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar, cast

from llama_index.storage.chat_store.core import CorruptDataError
from llama_index.storage.chat_store.core.backend import Change, Plan
from llama_index.storage.chat_store.core.catalog import ConversationInfo, merged_metadata
from llama_index.storage.chat_store.core.meta import RetryAtOnceError
from llama_index.storage.chat_store.core.tools import safe_trim_plan
from llama_index.storage.chat_store.dynamodb._chunks import Fresh, Head
from llama_index.storage.chat_store.dynamodb._expr import Expr, num, text
from llama_index.storage.chat_store.dynamodb._native_catalog import NativeCatalog
from llama_index.storage.chat_store.dynamodb._native_meta import (
    GEN_SPAN,
    LEASE,
    LEASE_ID,
    LEASE_SECONDS,
    MESSAGE,
    META_SK,
    NEXT,
    SEQ0,
    VER,
    WRITTEN,
    Edit,
    Meta,
    fits,
)
from llama_index.storage.chat_store.dynamodb._sdk import LostRaceError, Op, unreadable

__all__ = ["NativeLayout"]

R = TypeVar("R")
Step = Callable[[Meta, float], Plan[tuple[Edit | None, R]]]
"""What a change does on one meta state: a plan returning its edit (None: no change) and
what the call returns once that edit is committed."""


class NativeLayout(NativeCatalog):
    """Reads and writes conversations in the recommended item-per-message layout.

    Args:
        table: The table and its settings.
        sk: The sort key attribute.
        keys_index: Whether the table has the :data:`KEYS_INDEX` index.
        catalog_index: Whether the table has the :data:`CATALOG_INDEX` index.
    """

    def _apply(
        self, key: str, meta: Meta, plan: Edit, now: float, what: str, fresh: Fresh,
        op: Op, tag: str,
    ) -> Plan[None]:  # fmt: skip
        """Commit a plan tagged ``tag``: one transaction when it fits, else the large paths.

        New chunk items that do not fit the transaction are stored before it, once
        (unreferenced until committed). They expire a ttl later than the message items of
        this attempt would, so retries within that time reuse them; a commit later than that
        writes them again.

        Raises:
            LostRaceError: The meta changed since it was read.
        """
        ver = (meta.ver or 0) + 1  # what the meta action sets
        puts = [
            {"Put": {"Item": self._message_item(key, plan.gen, seq, head, now, ver)}}
            for seq, head in sorted(plan.puts.items())
        ]
        deletes = [
            {"Delete": {"Key": self._key(key, (meta.gen or 0) * GEN_SPAN + seq)}}
            for seq in plan.deletes
        ]
        meta_action = self._meta_action(key, meta, plan, now, tag)
        if fresh.rest and not fresh.written:
            fresh.expires = None if self.t.ttl is None else self.t.expiry(now, 2)
            chunks = [{"Put": {"Item": i}} for i in self._chunk_items(key, fresh)]
            if fits(puts + chunks, deletes):
                yield from self._commit(key, what, meta_action, [*puts, *chunks, *deletes])
                return
        reusable = fresh.expires is None or fresh.expires >= self.t.expiry(now, 2)
        if fresh.rest and not (fresh.written and reusable):
            fresh.expires = None if self.t.ttl is None else self.t.expiry(now, 3)
            requests = [{"PutRequest": {"Item": i}} for i in self._chunk_items(key, fresh)]
            yield from self.t.batch_write(what, requests)
            fresh.written = True
        if fits(puts, deletes):
            yield from self._commit(key, what, meta_action, [*puts, *deletes])
        elif plan.appends_only:
            yield from self._leased_append(key, meta, plan, puts, now, what, op, tag)
        elif not puts:
            # Only removals: once the meta no longer covers them they are invisible.
            gone = [(meta.gen or 0) * GEN_SPAN + seq for seq in plan.deletes]
            op.after(functools.partial(self._delete, key, gone, what))
            yield from self._commit(key, what, meta_action)
        else:
            yield from self._rewrite(key, meta, plan, now, what, op, tag)

    def _commit(
        self, key: str, what: str, meta_action: tuple[dict[str, Any], Meta],
        others: Sequence[dict[str, Any]] = (),
    ) -> Plan[None]:  # fmt: skip
        """Run the meta action (and ``others``) as one transaction; remember the result."""
        action, after = meta_action
        yield self.t.transact(what, [action, *others])
        self._learn(key, after)

    def _leased_append(
        self, key: str, meta: Meta, plan: Edit, puts: list[dict[str, Any]], now: float,
        what: str, op: Op, tag: str,
    ) -> Plan[None]:  # fmt: skip
        # More items than one transaction holds. Take a lease on the meta (other writers
        # wait), write the items beyond the visible range, then extend the range and drop the
        # lease in one conditional update: readers see all of the batch or none of it.
        lease_id = uuid.uuid4().hex
        e = Expr()
        sets = [
            f"{e.n(LEASE)} = {e.v(num(int(now) + LEASE_SECONDS))}",
            f"{e.n(LEASE_ID)} = {e.v(text(lease_id))}",
            f"{e.n(VER)} = {e.v(num((meta.ver or 0) + 1))}",
        ]
        try:
            yield self.t.update(
                what, self._key(key, META_SK), e, f"SET {', '.join(sets)}",
                self._guard(e, meta, now), ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )  # fmt: skip
        except LostRaceError as lost:
            # botocore resent the update after it took the lease: the lease is ours.
            held = lost.current or {}
            if held.get(LEASE_ID) != text(lease_id) or held.get(VER) != num((meta.ver or 0) + 1):
                raise
        leased = replace(meta, ver=(meta.ver or 0) + 1)
        written = num((leased.ver or 0) + 1)  # the version the final update commits
        items = [{"PutRequest": {"Item": {**p["Put"]["Item"], WRITTEN: written}}} for p in puts]
        commit = self._meta_action(key, leased, plan, now, tag, lease_id)
        yield from op.undoing(
            [self.t.batch_write(what, items), self._commit(key, what, commit)],
            functools.partial(self._release_lease, key, lease_id),
        )

    def _release_lease(self, key: str, lease_id: str) -> Plan[None]:
        e = Expr()
        # Best effort: the lease expires on its own (a no-op once the commit took it).
        yield from self.t.update_if(
            "release a lease", self._key(key, META_SK), e,
            f"REMOVE {e.n(LEASE)}, {e.n(LEASE_ID)}", f"{e.n(LEASE_ID)} = {e.v(text(lease_id))}",
        )  # fmt: skip

    def _delete(self, key: str, sort_keys: Iterable[int], what: str) -> Plan[None]:
        requests = [{"DeleteRequest": {"Key": self._key(key, k)}} for k in sort_keys]
        yield from self.t.batch_write(what, requests)

    def _change(self, key: str, what: str, change: Change, step: Step[R]) -> Plan[R]:
        """Run ``step(meta, now) -> (edit | None, result)`` until its commit wins the race.

        The first attempt plans on the meta this store last saw, when that is safe (see
        :meth:`_plannable`): its commit is conditioned on that state, so planning on it
        costs no read. When that commit loses, the next attempt plans at once on the meta
        item the failed condition returned; a step that changes nothing is trusted only
        on a meta read for it. Later losses back off and read the meta again.

        The chunks of the messages the change adds are those :meth:`_encoded` made for the
        call (every attempt writes the same ones); the chunks of messages it removes are
        deleted once it is committed.

        Every commit carries a tag of the call's :class:`Op`. A meta item that records one,
        read or returned by a failed condition, means an earlier attempt of this call won
        (its reply was lost, or botocore resent the commit after it landed): the call then
        returns that attempt's result instead of changing anything again.

        Raises:
            ChatStoreError: Every attempt lost a race with other writers (:meth:`Table.race`).
        """
        op = Op.of(change)
        yield from op.settle()
        fresh = op.adding[1] if op.adding is not None else Fresh()
        known = self.seen.get(key)

        def attempt() -> Plan[R]:
            nonlocal known
            now = time.time()
            if known is not None and self._plannable(known, now):
                meta, hinted = known, True
            else:
                meta, hinted = (yield from self._read_meta(key)), False
                if (won := op.committed(meta.ops)) is not None:
                    return cast("R", (yield from op.finish(won)))
                meta = yield from self._prepare(key, meta, now)
            known = None
            try:
                return (yield from self._attempt(key, what, op, step, meta, now, hinted, fresh))
            except LostRaceError as lost:
                winner = self._winner(key, lost)
                if winner is not None and (won := op.committed(winner.ops)) is not None:
                    return cast("R", (yield from op.finish(won)))
                if not hinted:
                    raise
                known = winner
                raise RetryAtOnceError from lost

        return (yield from self.t.race(key, attempt))

    def _attempt(
        self, key: str, what: str, op: Op, step: Step[R], meta: Meta, now: float, hinted: bool,
        fresh: Fresh,
    ) -> Plan[R]:  # fmt: skip
        """Plan the change on ``meta`` and commit it; return what the call returns.

        Raises:
            LostRaceError: The meta changed since it was read (or while the step read items).
            RetryAtOnceError: Nothing to do on a remembered ``meta``: read the real one.
        """
        plan, result = yield from step(meta, now)
        if plan is None and hinted:
            raise RetryAtOnceError
        if plan is None:
            return result
        tag = op.tag(result)
        if plan.dropped:  # their chunks go once the change is committed
            chunks = [k for head in plan.dropped for k in head.chunk_sort_keys()]
            op.after(functools.partial(self._delete, key, chunks, what))
        yield from self._apply(key, meta, plan, now, what, fresh, op, tag)
        return cast("R", (yield from op.finish()))

    # -- writes ----------------------------------------------------------------------------

    def append(self, key: str, messages: Sequence[str], change: Change) -> Plan[None]:
        """Append messages atomically (one transaction, or a leased batch when large).

        Raises:
            PayloadTooLargeError: A message is over the size the layout stores (nothing is
                written).
        """
        heads = self._encoded(key, messages, change)

        def step(meta: Meta, now: float) -> Plan[tuple[Edit, None]]:
            yield from ()
            return self._append_edit(meta, now, heads), None

        yield from self._change(key, "append messages", change, step)

    def insert(self, key: str, idx: int, message: str, change: Change) -> Plan[None]:
        """Insert like ``list.insert``: shift the shorter side of the conversation.

        Moved messages are rewritten as their head items only (chunks stay where they are).
        """
        (new,) = self._encoded(key, [message], change)

        def step(meta: Meta, now: float) -> Plan[tuple[Edit, None]]:
            count = meta.count(now)
            pos = min(max(idx + count, 0) if idx < 0 else idx, count)
            if pos == count or not meta.live(now):
                return self._append_edit(meta, now, [new]), None
            assert meta.gen is not None
            if pos <= count - pos:  # move the head one step down
                moved = yield from self._read_items(key, meta, 0, pos)
                puts = {meta.first - 1 + i: m for i, m in enumerate(moved)}
                puts[meta.first - 1 + pos] = new
                return Edit(meta.gen, meta.first - 1, meta.end, puts, []), None
            moved = yield from self._read_items(key, meta, pos, count)
            puts = {meta.first + pos + 1 + i: m for i, m in enumerate(moved)}
            puts[meta.first + pos] = new
            return Edit(meta.gen, meta.first, meta.end + 1, puts, []), None

        yield from self._change(key, "insert a message", change, step)

    def _append_edit(self, meta: Meta, now: float, heads: Sequence[Head]) -> Edit:
        if meta.live(now):
            assert meta.gen is not None
            puts = {meta.end + i: h for i, h in enumerate(heads)}
            return Edit(meta.gen, meta.first, meta.end + len(heads), puts, [],
                        fresh=meta.count(now) == 0, appends_only=True)  # fmt: skip
        gen = self._new_gen(meta, now)
        puts = {SEQ0 + i: h for i, h in enumerate(heads)}
        return Edit(gen, SEQ0, SEQ0 + len(heads), puts, [], True, True, True)

    def _read_items(self, key: str, meta: Meta, lo: int, hi: int) -> Plan[list[Head]]:
        """Return the heads at ``[lo, hi)`` of exactly this meta (their text not read).

        Raises:
            LostRaceError: The conversation changed meanwhile (the caller starts over).
        """
        read_meta, _, heads, _ = yield from self._read_range(key, lo, hi - lo, meta, whole=False)
        if not read_meta.same(meta):
            raise LostRaceError("changed while reading")
        return heads

    def _read_removed(
        self, key: str, meta: Meta, lo: int, hi: int
    ) -> Plan[tuple[list[Head], list[str | CorruptDataError]]]:
        """Return what positions ``[lo, hi)`` of exactly this meta hold, for a removal.

        Unlike a read, an item that is missing, holds no string message or lost a chunk
        does not stop a removal (corrupt data must stay deletable): it comes back as
        :class:`CorruptDataError`. The heads are those of chunked messages (their chunks go too).

        Raises:
            LostRaceError: The conversation changed meanwhile (the caller starts over).
        """
        assert meta.gen is not None
        base = meta.gen * GEN_SPAN
        items = yield from self._query_range(
            key, base + meta.first + lo, base + meta.first + hi - 1, limit=hi - lo
        )
        by_seq = {int(item[self.sk]["N"]) - base: item for item in items}
        heads: list[Head] = []
        found: list[str | CorruptDataError] = []
        for seq in range(meta.first + lo, meta.first + hi):
            item = by_seq.get(seq)
            head = None if item is None else self._parse_head(item)
            text = None if head is None else (yield from self._join(key, head))
            if head is not None and head.chunked:
                heads.append(head)
            if text is not None:
                found.append(text)
                continue
            stored = {} if item is None else item.get(MESSAGE, {})
            data = stored.get("S", stored.get("B"))
            why = (
                "the item is missing" if item is None
                else "a chunk is missing" if head is not None
                else f"its {MESSAGE!r} attribute is not a string"
            )  # fmt: skip
            data = data if isinstance(data, str | bytes) else None
            found.append(unreadable(self.t.name, key, seq - meta.first, data, why))
        damaged = any(isinstance(f, CorruptDataError) for f in found)
        if damaged and not (yield from self._read_meta(key)).same(meta):
            raise LostRaceError("changed while reading")
        return heads, found

    def delete_at(
        self, key: str, idx: int, change: Change
    ) -> Plan[tuple[int, str | CorruptDataError] | None]:
        """Remove the message at ``idx``; return ``(position, JSON)`` or None if out of range.

        A corrupt message is removed all the same and returned as :class:`CorruptDataError`.
        """

        def step(
            meta: Meta, now: float
        ) -> Plan[tuple[Edit | None, tuple[int, str | CorruptDataError] | None]]:
            count = meta.count(now)
            if not -count <= idx < count:
                return None, None
            assert meta.gen is not None
            pos = idx % count
            chunked, (removed,) = yield from self._read_removed(key, meta, pos, pos + 1)
            if pos == count - 1 or pos == 0:
                first = meta.first + (1 if pos == 0 and count > 1 else 0)
                end = meta.end - (0 if pos == 0 and count > 1 else 1)
                plan = Edit(meta.gen, first, end, {}, [meta.first + pos])
            elif pos < count - pos:  # move the head one step up
                moved = yield from self._read_items(key, meta, 0, pos)
                puts = {meta.first + 1 + i: m for i, m in enumerate(moved)}
                plan = Edit(meta.gen, meta.first + 1, meta.end, puts, [meta.first])
            else:
                moved = yield from self._read_items(key, meta, pos + 1, count)
                puts = {meta.first + pos + i: m for i, m in enumerate(moved)}
                plan = Edit(meta.gen, meta.first, meta.end - 1, puts, [meta.end - 1])
            return replace(plan, dropped=chunked), (pos, removed)

        return (yield from self._change(key, "delete a message", change, step))

    def delete_oldest(
        self, key: str, n: int | None, change: Change, tool_safe: bool = False,
        what: str = "delete the oldest messages",
    ) -> Plan[list[str | CorruptDataError]]:  # fmt: skip
        """Remove and return the first ``n`` messages (None: all; fewer if shorter; corrupt too).

        ``tool_safe``: also the tool results that would lead what is left (read after the
        first ``n`` from the same meta, so the removal stays one conditional commit).
        """

        def step(meta: Meta, now: float) -> Plan[tuple[Edit | None, list[str | CorruptDataError]]]:
            k = meta.count(now) if n is None else min(n, meta.count(now))
            if k <= 0:
                return None, []
            assert meta.gen is not None
            if tool_safe:

                def stored(lo: int, hi: int) -> Plan[list[str | CorruptDataError]]:
                    return (yield from self._read_removed(key, meta, lo, hi))[1]

                k = yield from safe_trim_plan(stored, k, meta.count(now))
            dropped, removed = yield from self._read_removed(key, meta, 0, k)
            deletes = list(range(meta.first, meta.first + k))
            first = meta.first + k if k < meta.count(now) else meta.end
            return Edit(meta.gen, first, meta.end, {}, deletes, dropped=dropped), removed

        return (yield from self._change(key, what, change, step))

    def delete_all(self, key: str, change: Change) -> Plan[list[str | CorruptDataError]]:
        """Remove the conversation; return its messages (corrupt ones too)."""
        return self.delete_oldest(key, None, change, what="delete a conversation")

    def replace(self, key: str, messages: Sequence[str], change: Change) -> Plan[None]:
        """Replace the conversation atomically (``[]`` removes it).

        Raises:
            PayloadTooLargeError: A message is over the size the layout stores (nothing is
                written).
        """
        if not messages:
            yield from self.delete_all(key, change)
            return
        heads = self._encoded(key, messages, change)

        def step(meta: Meta, now: float) -> Plan[tuple[Edit, None]]:
            gen = self._new_gen(meta, now)
            puts = {SEQ0 + i: h for i, h in enumerate(heads)}
            old = list(range(meta.first, meta.end)) if meta.gen is not None else []
            dropped = yield from self._chunked_heads(key, meta)
            plan = Edit(gen, SEQ0, SEQ0 + len(heads), puts, old, True, True, dropped=dropped)
            return plan, None

        yield from self._change(key, "replace a conversation", change, step)

    def set_metadata(
        self, key: str, changes: dict[str, str | None], change: Change
    ) -> Plan[ConversationInfo | None]:
        """Merge ``changes`` into the metadata in one commit on the meta item (None: no messages).

        Raises:
            PayloadTooLargeError: The merged metadata is too large (nothing is written).
        """

        def step(meta: Meta, now: float) -> Plan[tuple[Edit | None, ConversationInfo | None]]:
            yield from ()
            if meta.count(now) == 0:
                return None, None
            assert meta.gen is not None
            merged = merged_metadata(dict(meta.metadata), changes)
            plan = Edit(meta.gen, meta.first, meta.end, {}, [], metadata=merged)
            after = Meta(created=meta.created, updated=int(now * 1000),
                         metadata=tuple(sorted(merged.items())), gen=meta.gen,
                         first=meta.first, end=meta.end)  # fmt: skip
            return plan, self._entry(key, after, now)

        return (yield from self._change(key, "set metadata", change, step))

    def _rewrite(
        self, key: str, meta: Meta, plan: Edit, now: float, what: str, op: Op, tag: str
    ) -> Plan[None]:
        """Commit a plan too large for one transaction by writing a whole new generation.

        The new generation is reserved on the meta first (so no other writer uses it), its
        items are written while invisible, then the meta flips to it conditionally and the
        old generation is deleted. Chunks stay where they are: the new heads point at them.

        The new items are removed again when the flip is known to have failed; when its
        outcome is unknown they stay (a retry that finds ``tag`` on the meta uses them).

        Raises:
            LostRaceError: The meta changed since it was read.
        """
        if plan.new_gen:
            final = [plan.puts[s] for s in range(plan.first, plan.end)]
        else:
            assert meta.gen is not None
            current = yield from self._read_items(key, meta, 0, meta.count(now))
            by_seq = dict(zip(range(meta.first, meta.end), current, strict=True))
            by_seq.update(plan.puts)
            final = [by_seq[s] for s in range(plan.first, plan.end)]
        gen = yield from self._reserve_gen(key, meta, now, what)
        reserved = replace(meta, ver=(meta.ver or 0) + 1, next_gen=gen)
        flip_ver = (reserved.ver or 0) + 1
        requests = [
            {"PutRequest": {"Item": self._message_item(key, gen, SEQ0 + i, h, now, flip_ver)}}
            for i, h in enumerate(final)
        ]
        new = gen * GEN_SPAN + SEQ0
        drop_new = functools.partial(self._delete, key, range(new, new + len(final)), "clean up")
        yield from op.undoing([self.t.batch_write(what, requests)], drop_new)
        if meta.gen is not None:
            base = meta.gen * GEN_SPAN
            old = range(base + meta.first, base + meta.end)
            op.after(functools.partial(self._delete, key, old, what))
        flip = Edit(gen, SEQ0, SEQ0 + len(final), {}, [], new_gen=False, fresh=True,
                    chunked=any(h.chunked for h in final))  # fmt: skip
        try:
            yield from self._commit(key, what, self._meta_action(key, reserved, flip, now, tag))
        except LostRaceError as lost:
            # Without the item (a transaction conflict) only a read tells whether a resent
            # flip was ours: the new items are then the conversation.
            now_meta = self._winner(key, lost) or (yield from self._read_meta(key))
            if op.committed(now_meta.ops) is None:
                yield from drop_new()
            raise

    def _reserve_gen(self, key: str, meta: Meta, now: float, what: str) -> Plan[int]:
        """Take the next generation number on the meta (conditioned on ``meta``); return it.

        Raises:
            LostRaceError: The meta changed since it was read.
        """
        e = Expr()
        sets = [
            f"{e.n(NEXT)} = if_not_exists({e.n(NEXT)}, {e.v(num(int(now * 1000)))}) + "
            f"{e.v(num(1))}",
            f"{e.n(VER)} = {e.v(num((meta.ver or 0) + 1))}",
        ]
        reply = yield self.t.update(
            what, self._key(key, META_SK), e, f"SET {', '.join(sets)}", self._guard(e, meta, now),
            ReturnValues="ALL_NEW",
        )  # fmt: skip
        return int(reply["Attributes"][NEXT]["N"])

    def clear(self) -> Plan[None]:
        """Delete every item of the table (and forget what was seen)."""
        self.seen.clear()
        yield from self.t.clear([self.t.pk, self.sk])
