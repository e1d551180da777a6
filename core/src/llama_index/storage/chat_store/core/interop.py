"""Plug any chat store into LlamaIndex's memory modules.

LlamaIndex's memory classes accept only subclasses of LlamaIndex's own base
classes, and its LLM integrations check LlamaIndex's own block classes, so
messages are converted at this boundary, losslessly, through the one JSON
format both sides share:

* :class:`LlamaIndexChatStore` wraps a store for ``ChatMemoryBuffer``,
  ``ChatSummaryMemoryBuffer``, chat engines and agents (``store.as_llama_index()``
  returns one);
* :class:`LlamaIndexMemoryStore` wraps a store for the newer ``Memory``.

This module needs ``llama-index-core`` (the ``llama-index`` extra); nothing
else in this package imports it. Converting a message LlamaIndex cannot
represent (a role or block type it does not know) raises
:class:`~llama_index.storage.chat_store.core.errors.SerializationError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import SerializeAsAny, ValidationError

from llama_index.storage.chat_store.core.errors import (
    BackendImportError,
    InvalidKeyError,
    SerializationError,
)
from llama_index.storage.chat_store.core.messages import (
    ChatMessage,
    MessageRole,
    coerce_message,
    coerce_messages,
    message_to_json,
)
from llama_index.storage.chat_store.core.store import BaseChatStore

try:
    from llama_index.core.base.llms.types import ChatMessage as LlamaIndexChatMessage
    from llama_index.core.storage.chat_store.base import (
        BaseChatStore as LlamaIndexBaseChatStore,
    )
    from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise BackendImportError(
        "LlamaIndex interop needs llama-index-core >= 0.14.24: "
        "pip install 'llama-index-storage-chat-store-core[llama-index]'"
    ) from exc

__all__ = [
    "DEFAULT_ARCHIVE_SUFFIX",
    "LlamaIndexChatStore",
    "LlamaIndexMemoryStore",
    "to_llama_index_message",
]

DEFAULT_ARCHIVE_SUFFIX = ":archived"
"""Appended to a conversation key to name where :class:`LlamaIndexMemoryStore` archives."""


def _unrepresentable(message: ChatMessage) -> str | None:
    """Name what LlamaIndex cannot hold in ``message``, or ``None`` when it can."""
    if not isinstance(message.role, MessageRole):
        return f"role {message.role!r}"
    for block in message.blocks:
        # Our model keeps unknown block types (and known ones with unknown fields) as dicts.
        if isinstance(block, Mapping):
            return f"block type {block.get('block_type')!r} (fields {sorted(block)})"
    return None


def to_llama_index_message(message: ChatMessage) -> LlamaIndexChatMessage:
    """Convert one of our messages to LlamaIndex's ``ChatMessage`` through its JSON.

    LlamaIndex's constructors may add what they derive (an image's MIME type
    guessed from its bytes); nothing of the message is lost.

    Raises:
        SerializationError: LlamaIndex cannot represent the message (names the
            unknown role or block type).
    """
    problem = _unrepresentable(message)
    if problem is not None:
        raise SerializationError(
            f"LlamaIndex's ChatMessage cannot represent the {problem} of this message; "
            "read it with the chat store's own API instead"
        )
    try:
        return LlamaIndexChatMessage.model_validate_json(message_to_json(message))
    except ValidationError as exc:
        raise SerializationError(
            f"LlamaIndex's ChatMessage rejects this message: {exc.errors()[0]['msg']}"
        ) from exc


def _to_llama_index(messages: Sequence[ChatMessage]) -> list[LlamaIndexChatMessage]:
    return [to_llama_index_message(m) for m in messages]


def _maybe_to_llama_index(message: ChatMessage | None) -> LlamaIndexChatMessage | None:
    return None if message is None else to_llama_index_message(message)


class LlamaIndexChatStore(LlamaIndexBaseChatStore):
    """A chat store as LlamaIndex's ``BaseChatStore``, for ``ChatMemoryBuffer`` and friends.

    ``ChatMemoryBuffer.from_defaults(chat_store=store.as_llama_index(),
    chat_store_key="user1")``. Every call goes to the wrapped store, so its
    guarantees (atomic appends, persistence, sharing) hold; the async methods
    call the wrapped store's async methods (native where its driver is).
    Messages come back as LlamaIndex ``ChatMessage`` objects.

    Raises:
        SerializationError: A stored message has a role or block type LlamaIndex
            does not know (reading it through this adapter).
    """

    store: SerializeAsAny[BaseChatStore]
    """The wrapped chat store."""

    def __init__(self, store: BaseChatStore | None = None, **data: Any) -> None:
        if store is not None:
            data["store"] = store
        super().__init__(**data)

    @classmethod
    def class_name(cls) -> str:
        """Return the name LlamaIndex writes for this class in dumps."""
        return "ChatStoreCoreLlamaIndexChatStore"

    # -- sync --------------------------------------------------------------------------------

    def set_messages(self, key: str, messages: list[LlamaIndexChatMessage]) -> None:
        """Replace the conversation under ``key`` (``[]`` removes it)."""
        self.store.set_messages(key, coerce_messages(messages))

    def get_messages(self, key: str) -> list[LlamaIndexChatMessage]:
        """Return the conversation under ``key`` (``[]`` for a missing key)."""
        return _to_llama_index(self.store.get_messages(key))

    def add_message(self, key: str, message: LlamaIndexChatMessage, idx: int | None = None) -> None:
        """Append ``message`` (or insert it at ``idx``)."""
        self.store.add_message(key, coerce_message(message), idx)

    def delete_messages(self, key: str) -> list[LlamaIndexChatMessage] | None:
        """Remove the conversation; return its messages, or ``None`` if there were none."""
        removed = self.store.delete_messages(key)
        return None if removed is None else _to_llama_index(removed)

    def delete_message(self, key: str, idx: int) -> LlamaIndexChatMessage | None:
        """Remove and return the message at ``idx`` (``None`` when out of range)."""
        return _maybe_to_llama_index(self.store.delete_message(key, idx))

    def delete_last_message(self, key: str) -> LlamaIndexChatMessage | None:
        """Remove and return the last message (``None`` when there is none)."""
        return _maybe_to_llama_index(self.store.delete_last_message(key))

    def get_keys(self) -> list[str]:
        """Return the keys that hold messages."""
        return self.store.get_keys()

    # -- async -------------------------------------------------------------------------------

    async def aset_messages(self, key: str, messages: list[LlamaIndexChatMessage]) -> None:
        """Async :meth:`set_messages`."""
        await self.store.aset_messages(key, coerce_messages(messages))

    async def aget_messages(self, key: str) -> list[LlamaIndexChatMessage]:
        """Async :meth:`get_messages`."""
        return _to_llama_index(await self.store.aget_messages(key))

    async def async_add_message(
        self, key: str, message: LlamaIndexChatMessage, idx: int | None = None
    ) -> None:
        """Async :meth:`add_message` (LlamaIndex's name for it)."""
        await self.store.aadd_message(key, coerce_message(message), idx)

    async def adelete_messages(self, key: str) -> list[LlamaIndexChatMessage] | None:
        """Async :meth:`delete_messages`."""
        removed = await self.store.adelete_messages(key)
        return None if removed is None else _to_llama_index(removed)

    async def adelete_message(self, key: str, idx: int) -> LlamaIndexChatMessage | None:
        """Async :meth:`delete_message`."""
        return _maybe_to_llama_index(await self.store.adelete_message(key, idx))

    async def adelete_last_message(self, key: str) -> LlamaIndexChatMessage | None:
        """Async :meth:`delete_last_message`."""
        return _maybe_to_llama_index(await self.store.adelete_last_message(key))

    async def aget_keys(self) -> list[str]:
        """Async :meth:`get_keys`."""
        return await self.store.aget_keys()


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
    ) -> list[LlamaIndexChatMessage]:
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
        return _to_llama_index(found)

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
        message: LlamaIndexChatMessage,
        status: MessageStatus | str = MessageStatus.ACTIVE,
    ) -> None:
        """Append ``message`` with ``status``."""
        await self.store.aadd_message(self._target(key, status), coerce_message(message))

    async def add_messages(
        self,
        key: str,
        messages: list[LlamaIndexChatMessage],
        status: MessageStatus | str = MessageStatus.ACTIVE,
    ) -> None:
        """Append ``messages`` with ``status``, atomically."""
        await self.store.aadd_messages(self._target(key, status), coerce_messages(messages))

    async def set_messages(
        self,
        key: str,
        messages: list[LlamaIndexChatMessage],
        status: MessageStatus | str = MessageStatus.ACTIVE,
    ) -> None:
        """Replace every message of ``key`` (both statuses) by ``messages`` with ``status``."""
        active, archive = self._keys(key)
        target = self._target(key, status)
        await self.store.aset_messages(target, coerce_messages(messages))
        await self.store.aset_messages(archive if target == active else active, [])

    async def delete_message(self, key: str, idx: int) -> LlamaIndexChatMessage | None:
        """Remove and return the active message at position ``idx`` (``None``: out of range)."""
        active, _ = self._keys(key)
        return _maybe_to_llama_index(await self.store.adelete_message(active, idx))

    async def delete_messages(self, key: str, status: MessageStatus | str | None = None) -> None:
        """Remove the messages with ``status`` (``None``: all of them)."""
        active, archive = self._keys(key)
        wanted = _status(status)
        if wanted in (MessageStatus.ACTIVE, None):
            await self.store.adelete_messages(active)
        if wanted in (MessageStatus.ARCHIVED, None):
            await self.store.adelete_messages(archive)

    async def delete_oldest_messages(self, key: str, n: int) -> list[LlamaIndexChatMessage]:
        """Remove the oldest ``n`` active messages and return them."""
        active, _ = self._keys(key)
        return _to_llama_index(await self.store.adelete_oldest_messages(active, n))

    async def archive_oldest_messages(self, key: str, n: int) -> list[LlamaIndexChatMessage]:
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
        return _to_llama_index(removed)

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
