"""The conversation catalog of our layout: the meta table, read in key order.

The meta table's primary key is the conversation key, and Tablestore keeps rows in primary
key order (UTF-8 bytes, which is code point order), so a page of the catalog is one
GetRange from the first key of the page: O(page), whatever the table holds. An emptied
conversation keeps its meta row (``head == tail``, for its record of changes): the listing
steps over it. Each entry is on its meta row (:mod:`._entry`), so a page and each of its
counts, times and metadata come from one row read.

``set_metadata`` commits like every change: conditionally on the meta row's ``gen`` and
``ver`` as read, recording its op id, so it is atomic with respect to appends and removals
by any instance (one that loses the race reads again and merges again).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from llama_index.storage.chat_store.core import CapabilityNotSupportedError
from llama_index.storage.chat_store.core.backend import Change, Plan
from llama_index.storage.chat_store.core.catalog import (
    ConversationInfo,
    ConversationPage,
    merged_metadata,
)
from llama_index.storage.chat_store.core.meta import prefix_end
from llama_index.storage.chat_store.tablestore import _entry as entry
from llama_index.storage.chat_store.tablestore import _record as record
from llama_index.storage.chat_store.tablestore._native import (
    _META_COLUMNS,
    PAGE_ROWS,
    Meta,
    Tables,
    _intact,
    _meta_row,
    _parse_meta,
)
from llama_index.storage.chat_store.tablestore._native_writes import _commit
from llama_index.storage.chat_store.tablestore._sdk import cells, get_range, ts

__all__ = ["CatalogPlans", "conversation", "page", "set_metadata"]

_COLUMNS = [*_META_COLUMNS, *entry.COLUMNS]
_PAGE_REQUESTS = 8
"""GetRange requests a page may take before it returns fewer (emptied conversations between)."""


def _read(t: Tables, key: str) -> Plan[tuple[Meta | None, dict[str, Any]]]:
    """Read the meta row with its entry; raise :class:`CorruptDataError` if it is damaged."""
    meta, values = yield from _meta_row(t, key, _COLUMNS)
    return _intact(meta), values


def conversation(t: Tables, key: str) -> Plan[ConversationInfo | None]:
    """Return the catalog entry of ``key`` (one GetRow); ``None`` when it holds no messages.

    Raises:
        CorruptDataError: Its meta row or entry is damaged.
    """
    meta, values = yield from _read(t, key)
    if meta is None or meta.size == 0:
        return None
    return entry.info(t.meta, key, meta.size, values)


def set_metadata(
    t: Tables, key: str, changes: dict[str, str | None], change: Change
) -> Plan[ConversationInfo | None]:
    """Merge ``changes`` into the metadata, conditionally on the meta row as read.

    Returns the entry after the merge, ``None`` when the conversation holds no messages.

    Raises:
        PayloadTooLargeError: The merged metadata would be too large (nothing changes).
        CorruptDataError: Its meta row or entry is damaged.
    """
    where = f"table {t.meta!r}"

    def attempt() -> Plan[ConversationInfo | None]:
        if (yield from record.replayed(t.meta, key, change)) is not None:
            return (yield from conversation(t, key))  # applied by an attempt whose reply was lost
        meta, values = yield from _read(t, key)
        if meta is None or meta.size == 0:
            return None
        old = entry.read(where, key, values)
        merged = old.with_metadata(merged_metadata(old.encoded(where, key), changes))
        new = replace(meta, ver=meta.ver + 1)
        columns = {entry.METADATA: merged.metadata, entry.UPDATED: merged.updated}
        yield from _commit(t, key, meta, new, change, entry=columns)
        return merged.info(where, key, new.size)

    return (yield from record.RACE.run(key, where, attempt))


def page(t: Tables, prefix: str, after: str | None, limit: int) -> Plan[ConversationPage]:
    """Return the conversations after ``after`` whose key starts with ``prefix``, in key order.

    Reads ``limit + 1`` listed rows (the last only shows that more follow), stepping over
    emptied conversations. After :data:`_PAGE_REQUESTS` requests a page returns what it
    has, with the last key it read as the cursor.

    Raises:
        CorruptDataError: A meta row or entry in the page is damaged.
    """
    start = prefix if after is None or after < prefix else after
    end = prefix_end(prefix)
    if end is not None and start >= end:
        return ConversationPage([], None)
    high = [("session_id", ts.INF_MAX if end is None else end)]
    listed: list[ConversationInfo] = []
    next_pk: Any = [("session_id", start or ts.INF_MIN)]  # no empty key to start from
    last: str | None = None  # the last key read (``after`` aside)
    at_after = start == after  # the range starts at ``after`` itself: one more row to read
    for request in itertools.count(1):  # next_pk moves on with every request
        wanted = min(PAGE_ROWS, limit + 1 - len(listed) + at_after)
        _, next_pk, rows, _ = yield get_range(t.meta, next_pk, high, _COLUMNS, wanted)
        for row in rows:
            key = row.primary_key[0][1]
            if key == after:
                at_after = False
                continue
            info = _listed(t, key, row)
            if info is not None and len(listed) == limit:
                return ConversationPage(listed, listed[-1].key)  # one more follows
            listed += [info] if info is not None else []
            last = key
        if next_pk is None:
            return ConversationPage(listed, None)
        if request >= _PAGE_REQUESTS and last is not None:
            return ConversationPage(listed, last)
    raise AssertionError("unreachable")  # pragma: no cover


def _listed(t: Tables, key: str, row: Any) -> ConversationInfo | None:
    meta = _intact(_parse_meta(t, key, row))
    if meta is None or meta.size == 0:
        return None
    return entry.info(t.meta, key, meta.size, cells(row))


class CatalogPlans:
    """The catalog hooks of ``TablestoreChatStore``: our layout's, or LlamaIndex's refusal."""

    if TYPE_CHECKING:  # the store's own, named here for the type checker only
        table_name: str

        @property
        def _tables(self) -> Tables: ...

        def _layout_plan(self) -> Plan[str]: ...

    def _native_layout_plan(self) -> Plan[Tables]:
        if (yield from self._layout_plan()) != "native":
            raise CapabilityNotSupportedError(
                f"TablestoreChatStore keeps no conversation catalog (Capability.CATALOG) in "
                f"LlamaIndex's layout (table {self.table_name!r}: one row per conversation, "
                "no times or metadata): list keys with iter_keys(), count with "
                "count_messages(), or copy the conversations to our layout (chat-store copy)"
            )
        return self._tables

    def _catalog_plan(self, prefix: str, after: str | None, limit: int) -> Plan[ConversationPage]:
        return (yield from page((yield from self._native_layout_plan()), prefix, after, limit))

    def _conversation_plan(self, key: str) -> Plan[ConversationInfo | None]:
        return (yield from conversation((yield from self._native_layout_plan()), key))

    def _metadata_plan(
        self, key: str, changes: dict[str, str | None], change: Change
    ) -> Plan[ConversationInfo | None]:
        tables = yield from self._native_layout_plan()
        return (yield from set_metadata(tables, key, changes, change))
