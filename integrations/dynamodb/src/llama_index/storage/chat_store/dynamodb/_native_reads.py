"""The native layout's message items, and its reads (see :mod:`._native` for the layout)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from llama_index.storage.chat_store.core import ConfigurationError, CorruptDataError
from llama_index.storage.chat_store.core.backend import (
    Change,
    ConflictError,
    Plan,
    corrupt_data_remedy,
)
from llama_index.storage.chat_store.core.meta import RetryAtOnceError, span
from llama_index.storage.chat_store.dynamodb._chunks import (
    PARTS,
    PARTS_ID,
    Fresh,
    Head,
    chunk_sort_key,
    encode,
    part_of,
    valid,
)
from llama_index.storage.chat_store.dynamodb._expr import Expr, num, text
from llama_index.storage.chat_store.dynamodb._native_meta import (
    FLOOR,
    GEN,
    GEN_SPAN,
    KEY_COPY,
    KEYS_INDEX,
    MESSAGE,
    META_SK,
    READ_BY_KEY,
    SEQ0,
    VER,
    WRITTEN,
    Meta,
    MetaItems,
)
from llama_index.storage.chat_store.dynamodb._sdk import MAX_ITEM_BYTES, Op, item_size

__all__ = ["NativeReads", "missing_index"]


def missing_index(table: str, index: str, needed_by: str, remedy: str) -> ConfigurationError:
    """The error of an operation that queries ``index``, which ``table`` lacks."""
    return ConfigurationError(
        f"DynamoDB table {table!r} has no global secondary index {index!r}, which "
        f"{needed_by}: {remedy}"
    )


class NativeReads(MetaItems):
    """Message items of the native layout, and the reads of conversations."""

    def _message_item(
        self, key: str, gen: int, seq: int, head: Head, now: float, ver: int
    ) -> dict[str, Any]:
        """Return a message item; ``ver`` is the meta version whose commit makes it visible."""
        item = {
            **self._key(key, gen * GEN_SPAN + seq),
            MESSAGE: text(head.text),
            WRITTEN: num(ver),
        }
        if head.chunked:
            item[PARTS] = num(head.parts)
            item[PARTS_ID] = num(head.token)
        if self.t.ttl is not None:
            item[self.t.ttl_attribute] = num(self.t.expiry(now, 2))
        return item

    def _chunk_items(self, key: str, fresh: Fresh) -> list[dict[str, Any]]:
        ttl = {} if fresh.expires is None else {self.t.ttl_attribute: num(fresh.expires)}
        return [
            {**self._key(key, chunk_sort_key(token, n)), MESSAGE: text(part), **ttl}
            for token, parts in fresh.rest
            for n, part in enumerate(parts, start=1)
        ]

    def _encoded(self, key: str, messages: Sequence[str], change: Change) -> list[Head]:
        """Return the heads of the messages a change adds, encoded once per call.

        The heads and chunks are sized for this key's items, and kept in the call's
        :attr:`Op.adding` for every attempt.

        Raises:
            PayloadTooLargeError: A message is over the size the layout stores (nothing is
                written).
        """
        op = Op.of(change)
        if op.adding is None:
            # The largest item beside its text: a chunked head (or a chunk) with an expiry.
            widest = Head("", 999, 1 << 101)
            template = self._message_item(key, 10**21, SEQ0, widest, 0.0, 10**20)
            template[self.sk] = num(-(10**40))
            template[self.t.ttl_attribute] = num(10**12)
            op.adding = encode(key, messages, MAX_ITEM_BYTES - item_size(template))
        heads: list[Head] = op.adding[0]
        return heads

    def _parse_head(self, item: dict[str, Any], *, with_text: bool = True) -> Head | None:
        """Return the head an item holds, or None if it is not a readable message item."""
        value = item.get(MESSAGE, {}).get("S")
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

    def _query_range(
        self, key: str, lo: int, hi: int, *, limit: int, projection: Sequence[str] = ()
    ) -> Plan[list[dict[str, Any]]]:
        """Return the first ``limit`` items with sort keys ``lo <= sk <= hi``, in order.

        A range of at most :data:`READ_BY_KEY` sort keys is read by key (BatchGetItem).
        """
        if hi - lo < min(limit, READ_BY_KEY):
            return (yield from self._get_range(key, [], lo, hi, projection))[1]
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
            page = yield self.t.call("read messages", "query", **params)
            out.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page or len(out) >= limit:
                return out
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            params["Limit"] = limit - len(out)

    def _get_range(
        self, key: str, extra: list[int], lo: int, hi: int, projection: Sequence[str] = ()
    ) -> Plan[tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]]:
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
        keys = [self._key(key, sk) for sk in wanted]
        items = yield from self.t.batch_get("read messages", keys, **params)
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
                written = int(item.get(WRITTEN, {}).get("N", 0))
            except (TypeError, ValueError):
                head, written = None, 0
            out.append((int(item[self.sk]["N"]) - base, head, written))
        return out

    def _query(
        self, key: str, gen: int, lo: int, hi: int, *, with_text: bool = True
    ) -> Plan[list[tuple[int, Head | None, int]]]:
        """Return ``(seq, head, written)`` of the items ``lo <= seq < hi`` of a generation.

        ``written`` is the meta version that made the item's content visible (0 for items
        written before items carried it). ``with_text=False`` reads only what locates chunks
        (the heads' text is ``""``).
        """
        base = gen * GEN_SPAN
        projection = () if with_text else (self.sk, PARTS, PARTS_ID, WRITTEN)
        items = yield from self._query_range(
            key, base + lo, base + hi - 1, limit=hi - lo, projection=projection
        )
        return self._rows(items, base, with_text=with_text)

    def _join(self, key: str, head: Head) -> Plan[str | None]:
        """Return the whole message JSON of a head, or None if a chunk is missing."""
        if not head.chunked:
            return head.text
        keys = head.chunk_sort_keys()
        found: dict[int, str | None] = {}
        for item in (yield from self._query_range(key, keys[-1], keys[0], limit=len(keys))):
            found[part_of(int(item[self.sk]["N"]), head.token)] = item.get(MESSAGE, {}).get("S")
        parts = [found.get(part) for part in range(1, head.parts)]
        return None if None in parts else head.text + "".join(p for p in parts if p is not None)

    # -- reads -----------------------------------------------------------------------------

    def _read_meta_and_window(
        self, key: str, seen: Meta, offset: int, limit: int | None
    ) -> Plan[tuple[Meta, tuple[int, int, list[tuple[int, Head | None, int]]] | None]]:
        """Read the meta item and the window ``seen`` names, in one request if it is short.

        Returns the meta and, when it is still ``seen``'s version, the window ``(lo, hi)``
        with its items as :meth:`_query` returns them (None otherwise).
        """
        lo, hi = span(seen.count(time.time()), offset, limit)
        if seen.gen is None or seen.epoch is None or not 0 < hi - lo <= READ_BY_KEY:
            return (yield from self._read_meta(key)), None
        base = seen.gen * GEN_SPAN
        found, items = yield from self._get_range(
            key, [META_SK], base + seen.first + lo, base + seen.first + hi - 1
        )
        meta = self._learn(key, self._parse_meta(key, found.get(META_SK)))
        if not meta.same_version(seen):
            return meta, None
        return meta, (lo, hi, self._rows(items, base))

    def _read_range(
        self, key: str, offset: int, limit: int | None, meta: Meta | None = None,
        *, whole: bool = True, seen: Meta | None = None,
    ) -> Plan[tuple[Meta, int, list[Head], list[str]]]:  # fmt: skip
        """Return the meta, first position, heads and JSON of ``messages[offset:][:limit]``.

        All from one meta state (JSON only when ``whole``). Without ``meta``, the meta item
        is read first, with the window ``seen`` names (:meth:`_read_meta_and_window`).

        An item written after the meta's version (an insert or delete inside moved it, or
        a pop and an append reused its position) or missing makes the read start over from
        the meta read again: at once when it moved, after a pause when it did not (a change
        whose meta update is not visible yet). Only when the meta is unchanged is a missing
        item corrupt data.

        Raises:
            CorruptDataError: A message item or chunk is missing or unreadable while the meta
                is unchanged.
            ChatStoreError: The conversation changed during every attempt (:meth:`Table.race`).
        """

        def attempt() -> Plan[tuple[Meta, int, list[Head], list[str]]]:
            nonlocal meta, seen
            ahead = None
            if meta is None and seen is not None:
                meta, ahead = yield from self._read_meta_and_window(key, seen, offset, limit)
            meta = meta or (yield from self._read_meta(key))
            seen = None
            lo, hi = span(meta.count(time.time()), offset, limit)
            if lo >= hi:
                return meta, lo, [], []
            assert meta.gen is not None
            if ahead is not None and ahead[:2] == (lo, hi):
                got = ahead[2]
            else:
                got = yield from self._query(key, meta.gen, meta.first + lo, meta.first + hi)
            expected = list(range(meta.first + lo, meta.first + hi))
            heads = [h for _, h, _ in got if h is not None]
            later = any(written > (meta.ver or 0) for _, _, written in got)
            texts: list[str | None] = []
            if [seq for seq, _, _ in got] == expected and len(heads) == len(expected) and not later:
                for head in heads if whole else []:
                    texts.append((yield from self._join(key, head)))
                if all(t is not None for t in texts):
                    return meta, lo, heads, [t for t in texts if t is not None]
            again = yield from self._read_meta(key)
            if not again.same(meta):
                meta = again
                raise RetryAtOnceError
            if later:  # items of a change whose meta update is not visible yet: wait for it
                raise ConflictError
            seqs = {seq: head for seq, head, _ in got}
            missing = [s - meta.first for s in expected if seqs.get(s) is None]
            bad = missing[0] if missing else lo + texts.index(None)
            raise CorruptDataError(
                f"message at key {key!r} position {bad} is missing, has no "
                f"string {MESSAGE!r} attribute or lost a chunk in DynamoDB table "
                f"{self.t.name!r} ({corrupt_data_remedy(key)})",
                key=key,
                position=bad,
            )

        return (yield from self.t.race(key, attempt))

    def get(self, key: str, offset: int, limit: int | None) -> Plan[list[tuple[int, str]]]:
        """Return ``(position, JSON)`` of ``messages[offset:][:limit]``."""
        seen = self.seen.get(key)
        meta, lo, _, messages = yield from self._read_range(key, offset, limit, seen=seen)
        yield from self._refresh(key, meta)
        return list(enumerate(messages, start=lo))

    def count(self, key: str) -> Plan[int]:
        """Return the number of messages."""
        meta = yield from self._read_meta(key)
        count = meta.count(time.time())
        yield from self._refresh(key, meta)
        return count

    def _refresh(self, key: str, meta: Meta) -> Plan[None]:
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
        yield from self._prepare(key, meta, now)  # message items must outlive the new expiry
        e = Expr()
        ttl, floor, new = e.n(self.t.ttl_attribute), e.n(FLOOR), e.v(num(self.t.expiry(now)))
        yield from self.t.update_if(
            "refresh the expiry", self._key(key, META_SK), e, f"SET {ttl} = {new}",
            f"attribute_exists({e.n(GEN)}) AND {ttl} > {e.v({'N': f'{time.time():.6f}'})}"
            f" AND {ttl} < {new} AND {floor} >= {new}",
        )  # fmt: skip

    def keys_page(self, start: Any) -> Plan[tuple[list[str], Any]]:
        """Read the page of live keys at ``start`` from the sparse keys index (no messages).

        Raises:
            ConfigurationError: The table has no keys index.
        """
        if not self.keys_index:
            raise missing_index(
                self.t.name, KEYS_INDEX, f"get_keys() reads (hash key {KEY_COPY!r})",
                "create the table with DynamoDBChatStore.create_table() or add the index",
            )  # fmt: skip
        e = Expr()
        items, start = yield from self.t.scan_page(
            "list keys", start, IndexName=KEYS_INDEX,
            ProjectionExpression=f"{e.n(KEY_COPY)}, {e.n(self.t.ttl_attribute)}", **e.params(),
        )  # fmt: skip
        return self.t.live_keys(items, KEY_COPY), start

    def _chunked_heads(self, key: str, meta: Meta) -> Plan[list[Head]]:
        """Return the chunked heads of the meta's generation (reading no message text)."""
        if not meta.chunked or meta.gen is None or meta.first == meta.end:
            return []
        got = yield from self._query(key, meta.gen, meta.first, meta.end, with_text=False)
        return [h for _, h, _ in got if h is not None and h.chunked]

    def _prepare(self, key: str, meta: Meta, now: float) -> Plan[Meta]:
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
        sort_keys = [meta.gen * GEN_SPAN + seq for seq in range(meta.first, meta.end)]
        for head in (yield from self._chunked_heads(key, meta)):
            sort_keys.extend(head.chunk_sort_keys())
        for sort_key in sort_keys:
            e = Expr()
            ttl, mark = e.n(self.t.ttl_attribute), e.v(num(target))
            yield from self.t.update_if(  # a lost condition: gone, or already later
                "extend message expiry", self._key(key, sort_key), e, f"SET {ttl} = {mark}",
                f"attribute_exists({e.n(self.t.pk)}) AND "
                f"(attribute_not_exists({ttl}) OR {ttl} < {mark})",
            )  # fmt: skip
        floor = self._fresh_floor(now)
        e = Expr()
        yield from self.t.update_if(  # a lost condition: the conversation is gone
            "record message expiry", self._key(key, META_SK), e,
            f"SET {e.n(FLOOR)} = {e.v(num(floor))}", f"attribute_exists({e.n(VER)})",
        )  # fmt: skip
        return replace(meta, floor=floor)
