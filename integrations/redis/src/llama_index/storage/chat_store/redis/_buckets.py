r"""Buckets: one namespace spread over a Redis Cluster, every script still in one hash slot.

A Lua script may only touch keys of one hash slot, and every change touches a conversation
and its registry. A hash-tagged namespace (``"{app1}:"``) puts all of them in one slot, so on
one node. A namespace without a hash tag in cluster mode is *bucketed* instead:

* there are :data:`BUCKETS` (128) buckets; conversation ``key`` belongs to bucket
  ``zlib.crc32(key.encode("utf-8")) % 128``;
* bucket ``i`` has a hash tag :data:`TAGS` ``[i]``: the smallest three-digit decimal text
  (``"000"`` to ``"999"``) whose Redis Cluster slot (CRC16/XMODEM of the text, modulo 16384)
  lies in ``[i * 128, (i + 1) * 128)``, the i-th of 128 equal slot ranges. A cluster splits
  its slots into contiguous ranges per node, so each node serves its share of the buckets
  (42, 44 and 42 on three nodes as ``redis-cli --cluster create`` splits them);
* every key of a conversation starts with its bucket's *home* ``namespace + "{" + tag + "}"``
  (e.g. ``"app:{041}user1"``, ``"app:{041}user1\0info"``, ``"app:{041}user1\0ops"``) and the
  bucket keeps its own registry at ``home + "\0keys"`` and ``home + "\0expiry"``: a bucket is
  laid out exactly like a namespace of its own, and every script runs unchanged on it.

The bucket count, the hash of a key and the tags are part of the stored format: data written
with them is found only with the same ones, so they never change. (A namespace holding ``{``
without a hash tag is refused in cluster mode: its ``{`` would capture the bucket's tag.)

Single-conversation operations go to their bucket: one script call, as before. Listings walk
every bucket at once (:class:`Batch`: one pipelined request per node) and merge.
"""

from __future__ import annotations

import binascii
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from llama_index.storage.chat_store.core.backend import Plan
from llama_index.storage.chat_store.redis._replies import Op

__all__ = ["BUCKETS", "TAGS", "Batch", "bucket_of", "merged_page", "walk_rounds"]

T = TypeVar("T")

BUCKETS = 128
"""How many buckets a bucketed namespace has (part of the format: never changes)."""


def _tags() -> tuple[str, ...]:
    found: dict[int, str] = {}
    for tag in (f"{number:03d}" for number in range(1000)):
        slot = binascii.crc_hqx(tag.encode("utf-8"), 0) % 16384  # Redis Cluster's hash slot
        found.setdefault(slot // (16384 // BUCKETS), tag)
    return tuple(found[bucket] for bucket in range(BUCKETS))


TAGS = _tags()
"""The hash tag of each bucket (three digits; see the module docstring)."""


def bucket_of(key: str) -> int:
    """Return the bucket of conversation ``key``."""
    return zlib.crc32(key.encode("utf-8")) % BUCKETS


@dataclass(frozen=True)
class Batch:
    """Steps sent together, each to its own slot; the reply is their replies, in order."""

    steps: tuple[Any, ...]


def _ask(steps: list[Op[T]]) -> Plan[list[T]]:
    replies = yield Batch(tuple(steps))
    return [step.decode(reply) for step, reply in zip(steps, replies, strict=True)]


def _share(limit: int) -> int:
    # Keys spread evenly over the buckets: a page of `limit` takes about limit / BUCKETS from
    # each. Asking each for one more settles most pages in two rounds, the second asking only
    # the few buckets that may hold more of the page (see merged_page); every entry read
    # beyond the page costs parsing, which is most of a page's time.
    return min(limit, -(-limit // BUCKETS) + 1)


def merged_page(
    ask: Callable[[int, str | None, int], Op[tuple[list[T], str | None]]],
    name: Callable[[T], str],
    after: str | None,
    limit: int,
) -> Plan[tuple[list[T], str | None]]:
    """Read the first ``limit`` items after ``after`` of all the buckets, in key order.

    Args:
        ask: ``ask(bucket, after, size)``: the step reading up to ``size`` items of ``bucket``
            after ``after``; its reply, the items in order and the bucket's cursor (its last
            member read, ``None`` when the bucket has no more).
        name: The key of an item (str order is UTF-8 byte order, the registries' order).
        after: Where the page starts (``None``: the first key).
        limit: At most how many items (> 0).

    Returns:
        The items, and the cursor of the next page (the last key returned; ``None`` after
        the last page). A bucket has returned every item between ``after`` and its cursor,
        so once no bucket with more stops before the ``limit``-th item found, the first
        ``limit`` items found are the page; until then, those buckets are asked again from
        where they stopped, for twice as many.
    """
    cursors: dict[int, str | None] = dict.fromkeys(range(BUCKETS), after)
    asked, size, found = list(cursors), _share(limit), []
    while asked:
        replies = yield from _ask([ask(b, cursors[b], size) for b in asked])
        for bucket, (items, cursor) in zip(asked, replies, strict=True):
            found += items
            if cursor is None:
                del cursors[bucket]
            else:
                cursors[bucket] = cursor
        found.sort(key=name)
        edge = name(found[limit - 1]) if len(found) >= limit else None
        asked = [b for b, cursor in cursors.items() if edge is None or (cursor or "") < edge]
        size *= 2
    page = found[:limit]
    more = bool(cursors) or len(found) > limit
    return page, name(page[-1]) if more and page else None


def walk_rounds(
    ask: Callable[[int, Any], Op[tuple[list[T], Any]]], cursors: dict[int, Any] | None
) -> Plan[tuple[list[T], dict[int, Any] | None]]:
    """Read one round of every bucket not done: a page of each, from its own cursor.

    ``cursors``: each unfinished bucket's cursor (``None``: the first round). Returns what
    the round read and the cursors of the next round (``None``: every bucket is done).
    """
    if cursors is None:
        cursors = dict.fromkeys(range(BUCKETS))
    asked = list(cursors)
    replies = yield from _ask([ask(b, cursors[b]) for b in asked])
    found: list[T] = []
    following: dict[int, Any] = {}
    for bucket, (items, cursor) in zip(asked, replies, strict=True):
        found += items
        if cursor is not None:
            following[bucket] = cursor
    return found, following or None
