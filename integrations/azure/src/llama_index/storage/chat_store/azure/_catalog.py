"""The native layout's conversation catalog (``Capability.CATALOG``): listing in key order.

Each conversation's entry (message count, ``Created``, ``Updated``, ``Metadata``) is its
meta entity, kept by the conditional write of every change (:mod:`._native`). The index
is the order partition ``%order``: one entity per conversation with messages, under a
RowKey that sorts as the key's UTF-8 bytes do (:func:`order_key`), written before the
first message commits and removed after the last one goes, like the ``%keys`` entity
beside it. (``%keys`` RowKeys are :func:`encode_key`'s, which sort neither by code point
nor as the escaped characters would, and the service compares RowKeys by UTF-16 code unit.)

A page is one range query over ``%order`` (``limit + 1`` entities, from ``after``, within
``prefix``'s range) and one point read of the meta entity of each key in it (concurrent:
gathered on the async path, on :data:`READERS` threads on the sync one): O(page), whatever
the number of conversations. An index entity whose meta entity says empty or absent (a conversation
emptied meanwhile, or left behind by a crash between the last commit and the unlisting)
is skipped and the query goes on. Paging is by key, and a conversation with messages is
listed in ``%order`` for as long as it has them, so one present for the whole walk is in
exactly one page. ``next_after`` is the last key listed when more index entities follow,
else None (a page may then be followed by an empty last one, when those were stale).

Data written before the catalog has no ``%order`` entities: the first listing of a store
finds no ``%order`` marker entity, indexes every key of ``%keys`` (100 per transaction:
idempotent, so concurrent stores may do it at once), then writes the marker. Keys listed
meanwhile by this version are indexed by their writers; writers of earlier versions do not
index, so upgrade every writer first.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from llama_index.storage.chat_store.azure._codec import (
    BATCH_MAX_OPS,
    encode_key,
    order_bounds,
    order_group,
    order_group_end,
    order_key,
)
from llama_index.storage.chat_store.azure._native import META, ORDER_PARTITION, Meta
from llama_index.storage.chat_store.azure._native_writes import NativeLayout
from llama_index.storage.chat_store.azure._record import raced
from llama_index.storage.chat_store.azure._sdk import Batch, Get, Put, Query, Row
from llama_index.storage.chat_store.core.backend import Change, Plan
from llama_index.storage.chat_store.core.catalog import (
    ConversationInfo,
    ConversationPage,
    merged_metadata,
)

__all__ = ["INDEXED", "READERS", "Gets", "NativeCatalog", "aread_all", "read_all"]

INDEXED = "\uc001indexed"
"""The RowKey of ``%order``'s marker: every key of ``%keys`` was indexed (sorts after all)."""
_KEY_PROPERTIES = ("RowKey", "Key")


@dataclass(frozen=True)
class Gets:
    """Point reads of entities ``(pk, rk)``; result: a :class:`Row` or ``None`` for each."""

    table: str
    keys: tuple[tuple[str, str], ...]

    def each(self) -> list[Get]:
        return [Get(self.table, pk, rk) for pk, rk in self.keys]


READERS = 8
"""Threads the sync client reads a page's meta entities on (Azure's clients are thread-safe)."""

_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _readers() -> ThreadPoolExecutor:
    """This process's reader threads (a forked child makes its own: it has no threads)."""
    global _pool  # one pool per process, shared by every store
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(READERS, "chat-store-azure-reader"))
        return _pool[1]


def read_all(gets: Gets, send: Callable[[Get], Any]) -> list[Row | None]:
    """Run ``gets`` on the reader threads (the sync client); results in ``gets``' order."""
    each = gets.each()
    if len(each) < 2:
        return [send(get) for get in each]
    return list(_readers().map(send, each))


async def aread_all(gets: Gets, send: Callable[[Get], Awaitable[Any]]) -> list[Row | None]:
    """Run ``gets`` concurrently (the async client)."""
    return list(await asyncio.gather(*(send(get) for get in gets.each())))


def info(meta: Meta, where: str) -> ConversationInfo:
    """The catalog entry a meta entity holds."""
    return meta.entry.info(where, meta.key, meta.count)


def _wanted(key: Any, prefix: str, after: str | None) -> bool:
    return isinstance(key, str) and key.startswith(prefix) and (after is None or key > after)


class NativeCatalog(NativeLayout):
    """The native layout with its conversation catalog."""

    def __init__(self, table: str) -> None:
        super().__init__(table)
        self._indexed = False

    def conversation(self, key: str) -> Plan[ConversationInfo | None]:
        meta = yield from self.read_meta(key)
        return info(meta, self._storage) if meta.count > 0 else None

    @raced
    def set_metadata(
        self, key: str, changes: Mapping[str, str | None], change: Change
    ) -> Plan[ConversationInfo | None]:
        """Merge ``changes`` into the metadata by one conditional write of the meta entity.

        Read first (not planned on the remembered meta): the size check needs the current
        metadata. Returns None when the conversation has no messages.

        Raises:
            PayloadTooLargeError: The merged metadata is over the limit; nothing changes.
        """
        meta = yield from self.read_meta(key)
        if meta.count == 0:
            return None
        merged = merged_metadata(meta.entry.encoded(self._storage, key), changes)
        new = meta.change(change.id, entry=meta.entry.with_metadata(merged))
        done = yield from self._commit(meta, new, [self._meta_action(meta, new)], change,
                                       alone=True)  # fmt: skip
        return info(done, self._storage) if done.count > 0 else None

    # -- listing ----------------------------------------------------------------------------

    def list_page(self, prefix: str, after: str | None, limit: int) -> Plan[ConversationPage]:
        """Return the conversations after ``after`` whose key starts with ``prefix``."""
        yield from self._index_old_keys()
        lo, hi = order_bounds(prefix)
        bound = (lo, "ge")
        if after is not None:
            group = order_group(order_key(after))
            start = (group, "ge") if group else (order_key(after), "gt")
            bound = max(bound, start, key=lambda b: (b[0], b[1] == "gt"))
        listed: list[ConversationInfo] = []
        pending: list[str] = []
        more = True
        while len(listed) < limit and (pending or more):
            if not pending:
                want = limit - len(listed) + 1
                pending, bound, more = yield from self._scan(bound, hi, want, prefix, after)
                continue
            batch, pending = pending[: limit - len(listed)], pending[limit - len(listed) :]
            listed += yield from self._live(batch)
        next_after = listed[-1].key if listed and (pending or more) else None
        return ConversationPage(listed, next_after)

    def _scan(
        self, bound: tuple[str, str], hi: str, want: int, prefix: str, after: str | None
    ) -> Plan[tuple[list[str], tuple[str, str], bool]]:
        """Read up to ``want`` index entities from ``bound``.

        Returns the wanted keys in order, the bound after them, and whether more may follow.
        A group (keys too long for their own order key) is read whole and sorted here.
        """
        params = {"pk": ORDER_PARTITION, "lo": bound[0], "hi": hi}
        # bound[1] is "ge" or "gt": never user text.
        where = f"PartitionKey eq @pk and RowKey {bound[1]} @lo and RowKey lt @hi"
        query = Query(self.table, where, params, _KEY_PROPERTIES, want)
        rows, token = yield query
        while not rows and token is not None:  # an empty page: the service asks to go on
            rows, token = yield replace(query, token=token)
        keys: list[str] = []
        for row in rows:
            row_key = row.props["RowKey"]
            group = order_group(row_key)
            if group is not None:
                keys += yield from self._group(group, prefix, after)
                return keys, (order_group_end(group), "ge"), True
            if _wanted(row.props.get("Key"), prefix, after):
                keys.append(row.props["Key"])
            bound = (row_key, "gt")
        return keys, bound, token is not None

    def _group(self, group: str, prefix: str, after: str | None) -> Plan[list[str]]:
        """The wanted keys of a group, sorted."""
        rows = yield from self._range(
            ORDER_PARTITION, group, order_group_end(group), _KEY_PROPERTIES
        )
        return sorted(r.props["Key"] for r in rows if _wanted(r.props.get("Key"), prefix, after))

    def _live(self, keys: list[str]) -> Plan[list[ConversationInfo]]:
        """The entries of the conversations among ``keys`` that hold messages."""
        pks = [encode_key(key) for key in keys]
        rows = yield Gets(self.table, tuple((pk, META) for pk in pks))
        metas = [
            self._learn(self._parse_meta(key, pk, row))
            for key, pk, row in zip(keys, pks, rows, strict=True)
            if row is not None
        ]
        return [info(meta, self._storage) for meta in metas if meta.count > 0]

    def _index_old_keys(self) -> Plan[None]:
        """Index the keys listed before the catalog, once per table (see the docstring)."""
        if self._indexed:
            return
        if (yield Get(self.table, ORDER_PARTITION, INDEXED)) is None:
            token = None
            while True:
                keys, token = yield from self.keys_page(token, BATCH_MAX_OPS)
                actions = [("upsert", {"PartitionKey": ORDER_PARTITION, "RowKey": order_key(key),
                            "Key": key}, None) for key in sorted(set(keys))]  # fmt: skip
                if actions:
                    yield Batch(self.table, actions)
                if token is None:
                    break
            yield Put(self.table, {"PartitionKey": ORDER_PARTITION, "RowKey": INDEXED})
        self._indexed = True
