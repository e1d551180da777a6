"""LlamaIndex's layout: one item per conversation on LlamaIndex's hash-key-only table.

Item: ``{SessionId: key, History: [message as a DynamoDB map, ...], TTL: epoch seconds}``,
read and written so LlamaIndex's ``DynamoDBChatStore`` reads what we write and we read what it
wrote. On top of that:

* every write is conditioned on a version attribute and the length of ``History`` (LlamaIndex
  writes no version; the length catches its appends), so concurrent appends are never lost,
  and on a random epoch the item gets when it is created (a conversation deleted and written
  anew starts its version over; the epoch tells the two apart);
* a DynamoDB map cannot carry every JSON value exactly (floats come back as ``Decimal`` with
  their formatting normalised, 1e300 is out of DynamoDB's number range), so a message whose map
  is not exact also gets its JSON text in ``ChatStoreExact`` at the same index. The text is
  used only while it still matches the map at that index, so a write by LlamaIndex that
  reorders or replaces ``History`` can never pair a message with another one's text;
* the whole conversation must fit one 400 KB item: a write that would not is refused with
  :class:`PayloadTooLargeError` before anything is sent;
* the expiry is the item's TTL attribute, as LlamaIndex writes it (``ttl_seconds``): every
  change sets it, and with ``refresh_on_read`` a read of a live conversation slides it with a
  conditional update of that attribute alone (LlamaIndex's reads never do);
* every change writes its operation tag (see :class:`Op`) into ``ChatStoreOps``, the list of
  the item's last 16 changes, in the same conditional write, so a retry of a change whose
  reply was lost finds it and returns the first attempt's result. Removing a
  conversation's last message therefore leaves the item with an empty ``History`` (reads
  and ``get_keys`` skip it; LlamaIndex's store reads it as empty) that expires with the
  conversation's ttl, or after a day without one, where the table's TTL is enabled.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar, cast

from llama_index.storage.chat_store.core import CorruptDataError, PayloadTooLargeError
from llama_index.storage.chat_store.core.backend import (
    Change,
    Plan,
    corrupt_data_remedy,
)
from llama_index.storage.chat_store.core.meta import recorded, span
from llama_index.storage.chat_store.core.tools import is_tool_result_json, safe_trim_count
from llama_index.storage.chat_store.dynamodb._expr import Expr, num, text
from llama_index.storage.chat_store.dynamodb._sdk import (
    MAX_ITEM_BYTES,
    RECENT_OPS,
    Op,
    Table,
    item_size,
    unreadable,
)

__all__ = ["LlamaIndexLayout", "llama_index_table_definition"]

_HISTORY = "History"
_EXACT = "ChatStoreExact"
_VERSION = "ChatStoreVersion"
_EPOCH = "ChatStoreEpoch"
_OPS = "ChatStoreOps"
_TOMBSTONE_SECONDS = 86_400
T = TypeVar("T")


def llama_index_table_definition(table: str, pk: str) -> dict[str, Any]:
    """Return CreateTable parameters for LlamaIndex's table (hash key only, on demand)."""
    return {
        "TableName": table,
        "AttributeDefinitions": [{"AttributeName": pk, "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": pk, "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
    }


# -- JSON <-> DynamoDB map -----------------------------------------------------------------


def _number(value: Decimal | int) -> dict[str, Any] | None:
    """Return a typed number, or None when DynamoDB cannot hold it exactly."""
    try:
        number = Decimal(value)
        if number.is_zero():
            return {"N": "0"}
        digits = len(number.normalize().as_tuple().digits)
        if digits > 38 or not -130 <= number.adjusted() <= 125:
            return None
    except (InvalidOperation, ValueError):
        return None
    return {"N": str(value)}


def _to_attribute(value: Any, inexact: list[bool]) -> dict[str, Any]:
    """Return the typed attribute for a JSON value; flag values a map cannot carry exactly."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, (int, Decimal)):
        if isinstance(value, Decimal):
            inexact.append(True)  # DynamoDB drops a float's formatting (1.0 comes back as 1)
        typed = _number(value)
        if typed is None:
            inexact.append(True)
            return {"S": str(value)}
        return typed
    if isinstance(value, list):
        return {"L": [_to_attribute(v, inexact) for v in value]}
    if isinstance(value, dict):
        return {"M": {str(k): _to_attribute(v, inexact) for k, v in value.items()}}
    raise TypeError(f"not a JSON value: {type(value).__qualname__}")


def message_to_map(message_json: str) -> tuple[dict[str, Any], bool]:
    """Return the DynamoDB map LlamaIndex reads for a message, and whether it is exact."""
    inexact: list[bool] = []
    value = _to_attribute(json.loads(message_json, parse_float=Decimal), inexact)
    return value, not inexact


def _from_attribute(value: Any) -> Any:
    ((kind, inner),) = value.items()
    if kind == "NULL":
        return None
    if kind in ("S", "BOOL"):
        return inner
    if kind == "N":
        # Integers come back as integers (never Decimal); anything with a point or an
        # exponent was a float.
        return float(inner) if any(c in inner for c in ".eE") else int(inner)
    if kind == "B":
        # LlamaIndex writes image/audio/document payloads as bytes holding base64 text; in
        # JSON those fields carry that text. Other binary is base64-encoded, as bytes in JSON.
        try:
            base64.b64decode(bytes(inner), validate=True)
            return bytes(inner).decode("ascii")
        except (binascii.Error, ValueError):
            return base64.b64encode(bytes(inner)).decode("ascii")
    if kind == "L":
        return [_from_attribute(v) for v in inner]
    if kind == "M":
        return {k: _from_attribute(v) for k, v in inner.items()}
    if kind in ("SS", "NS", "BS"):
        return [_from_attribute({kind[0]: v}) for v in inner]
    raise TypeError(f"unknown DynamoDB type {kind!r}")


def map_to_json(value: Any) -> str:
    """Return the message JSON of a DynamoDB map written by LlamaIndex or by us.

    Raises:
        TypeError: The value is not made of DynamoDB attribute values.
    """
    return json.dumps(_from_attribute(value), ensure_ascii=False, separators=(",", ":"))


def _stored_result(value: Any) -> bool:
    """Whether a stored message map is a tool result (an unreadable one is not)."""
    try:
        return is_tool_result_json(map_to_json(value))
    except (TypeError, ValueError, AttributeError):
        return False


def _plain(value: Any) -> Any:
    """Return a typed value with numbers as Decimals, for comparing maps."""
    ((kind, inner),) = value.items()
    if kind == "N":
        return ("N", Decimal(inner))
    if kind == "L":
        return ("L", [_plain(v) for v in inner])
    if kind == "M":
        return ("M", {k: _plain(v) for k, v in inner.items()})
    if kind == "B":
        return ("B", bytes(inner))
    return (kind, inner)


def _maps(messages: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """Return the maps LlamaIndex reads, and the exact texts of those that are not exact."""
    maps, exact = [], []
    for message in messages:
        as_map, is_exact = message_to_map(message)
        maps.append(as_map)
        exact.append({"NULL": True} if is_exact else {"S": message})
    return maps, exact


# -- the layout ----------------------------------------------------------------------------


@dataclass
class _Item:
    """A conversation item as read (``exists`` False: none)."""

    exists: bool = False
    history: list[Any] = field(default_factory=list)
    exact: list[Any] = field(default_factory=list)
    version: int | None = None
    expires: int | None = None
    has_exact: bool = False
    size: int = 0
    epoch: str | None = None
    ops: list[str] = field(default_factory=list)


class LlamaIndexLayout:
    """Reads and writes conversations in LlamaIndex's single-item layout, with our atomicity."""

    def __init__(self, table: Table) -> None:
        self.t = table

    def _key(self, key: str) -> dict[str, Any]:
        return {self.t.pk: text(key)}

    def _read(self, key: str) -> Plan[_Item]:
        reply = yield self.t.call(
            "read a conversation", "get_item", Key=self._key(key), ConsistentRead=True
        )
        raw = reply.get("Item")
        if raw is None:
            return _Item()
        history = raw.get(_HISTORY, {"L": []})
        exact = raw.get(_EXACT, {"L": []})
        if "L" not in history or "L" not in exact:
            raise CorruptDataError(
                f"the item of key {key!r} in DynamoDB table {self.t.name!r} has no "
                f"{_HISTORY!r} list: {raw!r:.200} ({corrupt_data_remedy(key)})",
                key=key,
            )
        ttl = raw.get(self.t.ttl_attribute, {}).get("N")
        version = raw.get(_VERSION, {}).get("N")
        return _Item(
            exists=True,
            history=history["L"],
            exact=exact["L"],
            version=None if version is None else int(version),
            expires=None if ttl is None else int(Decimal(ttl)),
            has_exact=_EXACT in raw,
            size=item_size(raw),
            epoch=raw.get(_EPOCH, {}).get("S"),
            ops=[v["S"] for v in raw.get(_OPS, {}).get("L", []) if "S" in v],
        )

    def _live(self, item: _Item, now: float) -> list[Any]:
        if item.expires is not None and item.expires <= now:
            return []
        return item.history

    def _text(self, key: str, item: _Item, position: int) -> str:
        """Return the message JSON at ``position``: its exact text while that matches the map."""
        value = item.history[position]
        exact = item.exact[position] if position < len(item.exact) else {}
        try:
            if "S" in exact and _plain(message_to_map(exact["S"])[0]) == _plain(value):
                return str(exact["S"])
            return map_to_json(value)
        except (TypeError, ValueError, AttributeError) as exc:
            raise CorruptDataError(
                f"message at key {key!r} position {position} in DynamoDB table "
                f"{self.t.name!r} is not a LlamaIndex message map: {value!r:.200} "
                f"({corrupt_data_remedy(key)})",
                key=key,
                position=position,
            ) from exc

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str, offset: int, limit: int | None) -> Plan[list[tuple[int, str]]]:
        """Return ``(position, JSON)`` of ``messages[offset:][:limit]``."""
        item = yield from self._read(key)
        lo, hi = span(len(self._live(item, time.time())), offset, limit)
        found = [(p, self._text(key, item, p)) for p in range(lo, hi)]
        yield from self._refresh(key, item)
        return found

    def count(self, key: str) -> Plan[int]:
        """Return the number of messages."""
        item = yield from self._read(key)
        count = len(self._live(item, time.time()))
        yield from self._refresh(key, item)
        return count

    def _refresh(self, key: str, item: _Item) -> Plan[None]:
        """Slide a live conversation's expiry to now + ttl after a read (``refresh_on_read``).

        Only the TTL attribute changes, and only while it is still in the future: writers
        (ours and LlamaIndex's) are not disturbed, and an expired or deleted conversation
        stays so.
        """
        if not self.t.refresh_on_read or self.t.ttl is None:
            return
        now = time.time()
        if not self._live(item, now) or item.expires is None or self.t.expiry(now) <= item.expires:
            return
        e = Expr()
        ttl, new = e.n(self.t.ttl_attribute), e.v(num(self.t.expiry(now)))
        # A lost condition: changed, expired or deleted meanwhile, and left so.
        yield from self.t.update_if(
            "refresh the expiry", self._key(key), e, f"SET {ttl} = {new}",
            f"{ttl} > {e.v({'N': f'{time.time():.6f}'})} AND {ttl} < {new}",
        )  # fmt: skip

    def keys_page(self, start: Any) -> Plan[tuple[list[str], Any]]:
        """Read the page of keys with a non-empty, unexpired ``History`` at ``start`` (a scan)."""
        e = Expr()
        items, start = yield from self.t.scan_page(
            "list keys", start,
            ProjectionExpression=f"{e.n(self.t.pk)}, {e.n(self.t.ttl_attribute)}",
            FilterExpression=f"size({e.n(_HISTORY)}) > {e.v(num(0))}", **e.params(),
        )  # fmt: skip
        return self.t.live_keys(items, self.t.pk), start

    # -- writes ----------------------------------------------------------------------------

    def _guard(self, e: Expr, item: _Item) -> str:
        if not item.exists:
            return f"attribute_not_exists({e.n(self.t.pk)})"
        version = (
            f"attribute_not_exists({e.n(_VERSION)})"
            if item.version is None
            else f"{e.n(_VERSION)} = {e.v(num(item.version))}"
        )
        epoch = (
            f"attribute_not_exists({e.n(_EPOCH)})"
            if item.epoch is None
            else f"{e.n(_EPOCH)} = {e.v(text(item.epoch))}"
        )
        size = f"size({e.n(_HISTORY)}) = {e.v(num(len(item.history)))}"
        return f"{version} AND {epoch} AND {size}"

    def _check_size(self, key: str, size: int) -> None:
        if size > MAX_ITEM_BYTES:
            raise PayloadTooLargeError(
                f"conversation {key!r} would need a {size}-byte DynamoDB item; LlamaIndex's "
                f"layout keeps a conversation in one item of at most {MAX_ITEM_BYTES} bytes "
                "(400 KB). Nothing was written. Use the recommended table "
                "(DynamoDBChatStore(...).create_table()) for conversations without a ceiling."
            )

    def _write(
        self, key: str, item: _Item, messages: Sequence[str], now: float, tag: str
    ) -> Plan[None]:
        """Replace the item's conversation with ``messages``, conditioned on what was read.

        Raises:
            ConflictError: The item changed since it was read.
            PayloadTooLargeError: The conversation does not fit one item.
        """
        if not messages and not item.exists:
            return
        maps, exact = _maps(messages)
        yield from self._put(key, item, maps, exact, now, tag)

    def _put(
        self, key: str, item: _Item, history: list[Any], exact: list[Any], now: float,
        tag: str, *, checked: bool = True,
    ) -> Plan[None]:  # fmt: skip
        """Write the whole item, conditioned on ``item`` as read, with the change's ``tag``.

        An empty ``history`` keeps the item (and its recent operation ids) until the ttl,
        else for a day. ``checked``: refuse an item over the size limit before sending it.

        Raises:
            ConflictError: The item changed since it was read.
            PayloadTooLargeError: The conversation does not fit one item.
        """
        e = Expr()
        record = {
            **self._key(key),
            _HISTORY: {"L": history},
            _VERSION: num((item.version or 0) + 1),
            _EPOCH: text(item.epoch or uuid.uuid4().hex),
            _OPS: {"L": [text(t) for t in recorded(item.ops, tag, RECENT_OPS)]},
        }
        if any("S" in x for x in exact):
            record[_EXACT] = {"L": exact}
        if not history:
            seconds = self.t.ttl if self.t.ttl is not None else _TOMBSTONE_SECONDS
            record[self.t.ttl_attribute] = num(math.ceil(now + seconds))
        elif self.t.ttl is not None:
            record[self.t.ttl_attribute] = num(self.t.expiry(now))
        if checked:
            self._check_size(key, item_size(record))
        yield self.t.call(
            "write a conversation" if history else "delete a conversation", "put_item",
            Item=record, ConditionExpression=self._guard(e, item), **e.params(),
        )  # fmt: skip

    def _append(
        self, key: str, item: _Item, messages: Sequence[str], now: float, tag: str
    ) -> Plan[None]:
        """Append with list_append (only the new messages travel), conditioned on the read."""
        e = Expr()
        condition = self._guard(e, item)
        if not item.exists or not self._live(item, now):
            # A new or expired conversation: write the whole item.
            yield from self._write(key, item, messages, now, tag)
            return
        maps, exact = _maps(messages)
        added = sum(
            item_size({"x": as_map}) + (len(x["S"].encode()) + 8 if "S" in x else 0)
            for as_map, x in zip(maps, exact, strict=True)
        )
        self._check_size(key, item.size + added + 64)
        h = e.n(_HISTORY)
        sets = [
            f"{h} = list_append({h}, {e.v({'L': maps})})",
            f"{e.n(_VERSION)} = {e.v(num((item.version or 0) + 1))}",
            f"{e.n(_OPS)} = {e.v({'L': [text(t) for t in recorded(item.ops, tag, RECENT_OPS)]})}",
        ]
        if item.epoch is None:  # written by LlamaIndex or before items had an epoch
            sets.append(f"{e.n(_EPOCH)} = {e.v(text(uuid.uuid4().hex))}")
        if len(item.exact) == len(item.history) and item.has_exact:
            sets.append(f"{e.n(_EXACT)} = list_append({e.n(_EXACT)}, {e.v({'L': exact})})")
        elif any("S" in v for v in exact) or item.has_exact:
            padding: list[Any] = [{"NULL": True}] * len(item.history)
            sets.append(f"{e.n(_EXACT)} = {e.v({'L': padding + exact})}")
        if self.t.ttl is not None:
            sets.append(f"{e.n(self.t.ttl_attribute)} = {e.v(num(self.t.expiry(now)))}")
        yield self.t.update(
            "append messages", self._key(key), e, f"SET {', '.join(sets)}", condition
        )

    def _retried(
        self, key: str, change: Change, attempt: Callable[[Op, _Item], Plan[T]]
    ) -> Plan[T]:
        """Run the plan ``attempt(op, item read)`` until it wins the race (:meth:`Table.race`).

        Every attempt reads the item first; one that finds a tag of this call's
        :class:`Op` there knows an earlier attempt committed (its reply was lost, or
        botocore resent the write after it landed) and returns that attempt's result.
        """
        op = Op.of(change)

        def read_first() -> Plan[T]:
            item = yield from self._read(key)
            if (won := op.committed(item.ops)) is not None:
                return cast("T", (yield from op.finish(won)))
            return (yield from attempt(op, item))

        return (yield from self.t.race(key, read_first))

    def _change(
        self, key: str, change: Change, edit: Callable[[list[str]], list[str]]
    ) -> Plan[None]:
        """Write the conversation as ``edit(its messages as read)`` until that wins the race."""

        def attempt(op: Op, item: _Item) -> Plan[None]:
            now = time.time()
            current = [self._text(key, item, p) for p in range(len(self._live(item, now)))]
            yield from self._write(key, item, edit(current), now, op.tag(None))

        yield from self._retried(key, change, attempt)

    def append(self, key: str, messages: Sequence[str], change: Change) -> Plan[None]:
        """Append messages atomically."""

        def attempt(op: Op, item: _Item) -> Plan[None]:
            yield from self._append(key, item, messages, time.time(), op.tag(None))

        yield from self._retried(key, change, attempt)

    def insert(self, key: str, idx: int, message: str, change: Change) -> Plan[None]:
        """Insert like ``list.insert``."""

        def edit(current: list[str]) -> list[str]:
            current.insert(idx, message)
            return current

        yield from self._change(key, change, edit)

    def replace(self, key: str, messages: Sequence[str], change: Change) -> Plan[None]:
        """Replace the conversation (``[]`` removes it)."""
        yield from self._change(key, change, lambda _: list(messages))

    def _remove(
        self, key: str, change: Change, pick: Callable[[int, _Item], range]
    ) -> Plan[tuple[range, list[str | CorruptDataError]]]:
        """Remove the positions ``pick(count, item)`` and return what they held.

        Works on the stored list as it is, so a corrupt message is removed like any other
        (returned as :class:`CorruptDataError`) and the messages kept are never rewritten.
        """

        def attempt(op: Op, item: _Item) -> Plan[tuple[range, list[str | CorruptDataError]]]:
            now = time.time()
            count = len(self._live(item, now))
            chosen = pick(count, item)
            if not chosen:
                return chosen, []
            removed: list[str | CorruptDataError] = []
            for position in chosen:
                try:
                    removed.append(self._text(key, item, position))
                except CorruptDataError:
                    stored = repr(item.history[position])
                    why = "not a message map"
                    removed.append(unreadable(self.t.name, key, position, stored, why))
            # The messages kept, as stored (never rewritten), with their exact texts.
            kept = [i for i in range(count) if i not in chosen]
            exact = [item.exact[i] if i < len(item.exact) else {"NULL": True} for i in kept]
            history = [item.history[i] for i in kept]
            tag = op.tag((chosen, removed))
            yield from self._put(key, item, history, exact, now, tag, checked=False)
            return chosen, removed

        return (yield from self._retried(key, change, attempt))

    def delete_all(self, key: str, change: Change) -> Plan[list[str | CorruptDataError]]:
        """Remove the conversation; return its messages (corrupt ones too)."""
        return (yield from self._remove(key, change, lambda count, _: range(count)))[1]

    def delete_at(
        self, key: str, idx: int, change: Change
    ) -> Plan[tuple[int, str | CorruptDataError] | None]:
        """Remove the message at ``idx``; ``(position, JSON)`` or None when out of range."""

        def pick(count: int, _: _Item) -> range:
            if not -count <= idx < count:
                return range(0)
            return range(idx % count, idx % count + 1)

        chosen, removed = yield from self._remove(key, change, pick)
        return (chosen[0], removed[0]) if removed else None

    def delete_oldest(
        self, key: str, n: int, change: Change, tool_safe: bool = False
    ) -> Plan[list[str | CorruptDataError]]:
        """Remove and return the first ``n`` messages (corrupt ones too).

        ``tool_safe``: also the tool results that would lead what is left.
        """

        def pick(count: int, item: _Item) -> range:
            if tool_safe:
                return range(safe_trim_count(item.history[:count], n, _stored_result))
            return range(min(max(n, 0), count))

        _, removed = yield from self._remove(key, change, pick)
        return removed

    def clear(self) -> Plan[None]:
        """Delete every item of the table."""
        yield from self.t.clear([self.t.pk])
