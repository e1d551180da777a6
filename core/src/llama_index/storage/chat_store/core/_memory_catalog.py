"""The conversation catalog of the in-memory stores (``SimpleChatStore`` and its file store)."""

from __future__ import annotations

import copy
import heapq
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from typing_extensions import TypedDict

from llama_index.storage.chat_store.core.catalog import (
    ConversationInfo,
    ConversationPage,
    check_listing,
    check_metadata,
    conversation_not_found,
    decode_metadata,
    encode_value,
    from_epoch_ms,
    merged_metadata,
)
from llama_index.storage.chat_store.core.messages import ChatMessage

__all__ = ["CatalogInMemory", "Entry"]


class Entry(TypedDict):
    """A conversation's catalog entry: epoch milliseconds (``None``: not known) and metadata."""

    created_at: int | None
    updated_at: int | None
    metadata: dict[str, Any]


class CatalogInMemory:
    """The catalog methods over ``store`` (conversations) and ``catalog`` (their entries).

    The store calls :meth:`_stamp` under its lock after every change of a conversation.
    """

    store: dict[str, list[ChatMessage]]
    catalog: dict[str, Entry]

    if TYPE_CHECKING:  # the store's own, named here for the type checker only

        @property
        def _guard(self) -> threading.RLock: ...

        def _check_key(self, key: str) -> str: ...

        def _changed(self) -> None: ...

    def _stamp(self, key: str, began: bool) -> None:
        """Keep ``key``'s catalog entry after a change (under the lock).

        It goes with the last message; a conversation that ``began`` starts a new one.
        """
        if key not in self.store:
            self.catalog.pop(key, None)
            return
        now = time.time_ns() // 1_000_000
        entry = self.catalog.get(key)
        if began or entry is None:
            self.catalog[key] = {"created_at": now if began else None, "updated_at": now,
                                 "metadata": {}}  # fmt: skip
        else:
            entry["updated_at"] = now

    # -- the conversation catalog ------------------------------------------------------------

    def list_conversations(
        self, prefix: str | None = None, after: str | None = None, limit: int = 100
    ) -> ConversationPage:
        """Return a page of conversations in key order (see the base class)."""
        check_listing(prefix, after, limit)
        start = prefix or ""
        with self._guard:
            found = (k for k in self.store if k.startswith(start) and (after is None or k > after))
            keys = heapq.nsmallest(limit + 1, found)
            page = [self._entry(k) for k in keys[:limit]]
        return ConversationPage(page, keys[limit - 1] if len(keys) > limit else None)

    def get_conversation(self, key: str) -> ConversationInfo | None:
        """Return the catalog entry of ``key`` (``None``: no messages)."""
        key = self._check_key(key)
        with self._guard:
            return self._entry(key) if key in self.store else None

    def set_metadata(self, key: str, metadata: Mapping[str, Any]) -> ConversationInfo:
        """Merge ``metadata`` into the conversation's (see the base class)."""
        key = self._check_key(key)
        changes = check_metadata(metadata)
        with self._guard:
            if key not in self.store:
                raise conversation_not_found(key)
            self._stamp(key, False)
            entry = self.catalog[key]
            current = {name: encode_value(value) for name, value in entry["metadata"].items()}
            entry["metadata"] = decode_metadata(merged_metadata(current, changes))
            self._changed()
            return self._entry(key)

    def _entry(self, key: str) -> ConversationInfo:
        entry = self.catalog.get(key)
        if entry is None:
            return ConversationInfo(key, len(self.store[key]), None, None)
        return ConversationInfo(
            key,
            len(self.store[key]),
            from_epoch_ms(entry["created_at"]),
            from_epoch_ms(entry["updated_at"]),
            copy.deepcopy(entry["metadata"]),
        )
