"""Plug a chat store into LlamaIndex's newer ``Memory`` (``AsyncDBChatStore``).

Every store already is LlamaIndex's ``BaseChatStore`` when ``llama-index-core`` is
installed, so ``ChatMemoryBuffer``, ``ChatSummaryMemoryBuffer``, chat engines and agents
take the store itself. ``Memory`` wants a different, status-aware protocol:
:class:`LlamaIndexMemoryStore` adapts any store to it.

This module needs ``llama-index-core`` (the ``llama-index`` extra).
"""

from __future__ import annotations

from typing import Any

from pydantic import SerializeAsAny

from llama_index.storage.chat_store.core.errors import BackendImportError, InvalidKeyError
from llama_index.storage.chat_store.core.messages import (
    ChatMessage,
    message_to_json,
)
from llama_index.storage.chat_store.core.store import BaseChatStore

try:
    from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise BackendImportError(
        "LlamaIndex interop needs llama-index-core >= 0.14.24: "
        "pip install 'llama-index-storage-chat-store-core[llama-index]'"
    ) from exc

__all__ = ["DEFAULT_ARCHIVE_SUFFIX", "LlamaIndexMemoryStore"]

DEFAULT_ARCHIVE_SUFFIX = ":archived"
"""Appended to a conversation key to name where :class:`LlamaIndexMemoryStore` archives."""


def _status(status: MessageStatus | str | None) -> MessageStatus | None:
    return None if status is None else MessageStatus(status)


class LlamaIndexMemoryStore(AsyncDBChatStore):
    """A chat store as LlamaIndex's ``AsyncDBChatStore``, for the newer ``Memory``.

    ``Memory.from_defaults(session_id="user1", chat_store=LlamaIndexMemoryStore(store))``.
    Active messages live under the conversation key; archived ones under the
    key plus :attr:`archive_suffix` (so a plain reader of the store sees both).
    Archiving copies the oldest messages to the archive, then removes them from
    the active list: a crash in between leaves them in both places (archived at
    least once, never lost). Keys ending with the suffix are rejected.

    Positions (``delete_message``'s ``idx``, ``offset``) count within the
    active messages, or within archived-then-active when ``status`` is None.
    """

    store: SerializeAsAny[BaseChatStore]
    """The wrapped chat store (best dedicated to this memory)."""
    archive_suffix: str = DEFAULT_ARCHIVE_SUFFIX
    """Appended to a key to name its archive."""

    def __init__(self, store: BaseChatStore | None = None, **data: Any) -> None:
        if store is not None:
            data["store"] = store
        super().__init__(**data)

    @classmethod
    def class_name(cls) -> str:
        """Return the name LlamaIndex writes for this class in dumps."""
        return "ChatStoreCoreLlamaIndexMemoryStore"

    def _keys(self, key: str) -> tuple[str, str]:
        """Return (active key, archive key) for a conversation key."""
        if isinstance(key, str) and key.endswith(self.archive_suffix):
            raise InvalidKeyError(
                f"key {key!r} ends with the archive suffix {self.archive_suffix!r}"
            )
        return key, key + self.archive_suffix

    async def get_messages(
        self,
        key: str,
        status: MessageStatus | str | None = MessageStatus.ACTIVE,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[ChatMessage]:
        """Return messages with ``status`` (``None``: archived then active), windowed."""
        active, archive = self._keys(key)
        wanted = _status(status)
        start = offset or 0
        if wanted is MessageStatus.ACTIVE:
            found = await self.store.aget_messages(active, offset=start, limit=limit)
        elif wanted is MessageStatus.ARCHIVED:
            found = await self.store.aget_messages(archive, offset=start, limit=limit)
        else:
            found = await self._get_both(active, archive, start, limit)
        return found

    async def _get_both(
        self, active: str, archive: str, start: int, limit: int | None
    ) -> list[ChatMessage]:
        archived = await self.store.acount_messages(archive)
        if start < 0:
            start = max(0, archived + await self.store.acount_messages(active) + start)
        found: list[ChatMessage] = []
        if start < archived:
            found = await self.store.aget_messages(archive, offset=start, limit=limit)
        if limit is None or len(found) < limit:
            rest = None if limit is None else limit - len(found)
            found += await self.store.aget_messages(
                active, offset=max(0, start - archived), limit=rest
            )
        return found

    async def count_messages(
        self, key: str, status: MessageStatus | str | None = MessageStatus.ACTIVE
    ) -> int:
        """Count messages with ``status`` (``None``: all)."""
        active, archive = self._keys(key)
        wanted = _status(status)
        total = 0
        if wanted in (MessageStatus.ACTIVE, None):
            total += await self.store.acount_messages(active)
        if wanted in (MessageStatus.ARCHIVED, None):
            total += await self.store.acount_messages(archive)
        return total

    def _target(self, key: str, status: MessageStatus | str) -> str:
        active, archive = self._keys(key)
        return archive if _status(status) is MessageStatus.ARCHIVED else active

    async def add_message(
        self,
        key: str,
        message: ChatMessage,
        status: MessageStatus | str = MessageStatus.ACTIVE,
    ) -> None:
        """Append ``message`` with ``status``."""
        await self.store.aadd_message(self._target(key, status), message)

    async def add_messages(
        self,
        key: str,
        messages: list[ChatMessage],
        status: MessageStatus | str = MessageStatus.ACTIVE,
    ) -> None:
        """Append ``messages`` with ``status``, atomically."""
        await self.store.aadd_messages(self._target(key, status), messages)

    async def set_messages(
        self,
        key: str,
        messages: list[ChatMessage],
        status: MessageStatus | str = MessageStatus.ACTIVE,
    ) -> None:
        """Replace every message of ``key`` (both statuses) by ``messages`` with ``status``."""
        active, archive = self._keys(key)
        target = self._target(key, status)
        await self.store.aset_messages(target, messages)
        await self.store.aset_messages(archive if target == active else active, [])

    async def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove and return the active message at position ``idx`` (``None``: out of range)."""
        active, _ = self._keys(key)
        return await self.store.adelete_message(active, idx)

    async def delete_messages(self, key: str, status: MessageStatus | str | None = None) -> None:
        """Remove the messages with ``status`` (``None``: all of them)."""
        active, archive = self._keys(key)
        wanted = _status(status)
        if wanted in (MessageStatus.ACTIVE, None):
            await self.store.adelete_messages(active)
        if wanted in (MessageStatus.ARCHIVED, None):
            await self.store.adelete_messages(archive)

    async def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Remove the oldest ``n`` active messages and return them."""
        active, _ = self._keys(key)
        return await self.store.adelete_oldest_messages(active, n)

    async def archive_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Move the oldest ``n`` active messages to the archive and return them.

        Copy first, then remove: a crash in between archives them twice rather
        than never. When a concurrent writer changed the head in between, the
        messages actually removed are archived too.
        """
        active, archive = self._keys(key)
        if n <= 0:
            return []
        copied = await self.store.aget_messages(active, limit=n)
        if not copied:
            return []
        await self.store.aadd_messages(archive, copied)
        removed = await self.store.adelete_oldest_messages(active, len(copied))
        missed = _not_in(removed, copied)
        if missed:
            await self.store.aadd_messages(archive, missed)
        return removed

    async def get_keys(self) -> list[str]:
        """Return the conversation keys with active or archived messages."""
        keys: dict[str, None] = {}
        async for key in self.store.aiter_keys():
            if key.endswith(self.archive_suffix):
                key = key[: -len(self.archive_suffix)]
            keys[key] = None
        return list(keys)


def _not_in(removed: list[ChatMessage], copied: list[ChatMessage]) -> list[ChatMessage]:
    """Return the removed messages that the copy did not include (a multiset difference)."""
    pending = [message_to_json(m) for m in copied]
    missed = []
    for message in removed:
        text = message_to_json(message)
        if text in pending:
            pending.remove(text)
        else:
            missed.append(message)
    return missed
