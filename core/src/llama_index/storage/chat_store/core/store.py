"""The chat store protocol every backend implements.

A backend subclasses :class:`BaseChatStore`, implements the sync methods and,
where it has an async driver, the ``a*`` methods. The base class provides:

* ``a*`` defaults that run the sync method in a worker thread;
* LlamaIndex's ``async_*`` names as final delegates to the ``a*`` methods (a
  subclass that defines one is rejected at class creation);
* argument checks every backend calls (:meth:`BaseChatStore._check_key`,
  :func:`check_window`), so keys and windows mean the same everywhere;
* ``class_name`` in dumps, ``to_dict``/``from_dict``, context managers.
"""

from __future__ import annotations

import asyncio
import difflib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import (
    ConfigDict,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from llama_index.storage.chat_store.core._mode import LLAMA_INDEX, LlamaIndexBaseChatStore
from llama_index.storage.chat_store.core.capabilities import Capability
from llama_index.storage.chat_store.core.catalog import ConversationInfo, ConversationPage
from llama_index.storage.chat_store.core.errors import (
    BackendImportError,
    CapabilityNotSupportedError,
    InvalidKeyError,
)
from llama_index.storage.chat_store.core.messages import ChatMessage

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_KEY_CHARS",
    "BaseChatStore",
    "check_flag",
    "check_index",
    "check_window",
    "window",
]

MAX_KEY_CHARS = 256
"""Every backend accepts keys up to this many characters (and :data:`MAX_KEY_BYTES`)."""
MAX_KEY_BYTES = 1024
"""Every backend accepts keys up to this many UTF-8 bytes."""

_T = TypeVar("_T")

# LlamaIndex's async names; each delegates to the ``a*`` method of the same name.
_ASYNC_ALIASES = (
    "get_messages",
    "count_messages",
    "add_message",
    "add_messages",
    "set_messages",
    "delete_messages",
    "delete_message",
    "delete_last_message",
    "delete_oldest_messages",
    "get_keys",
)


def check_window(offset: int, limit: int | None, tool_safe: bool = False) -> None:
    """Validate a ``get_messages`` window.

    Raises:
        ValueError: ``limit`` is negative.
        TypeError: ``offset`` or ``limit`` is not an int, or ``tool_safe`` not a bool.
    """
    check_flag("tool_safe", tool_safe)
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {type(offset).__qualname__}")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int or None, got {type(limit).__qualname__}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")


def check_index(name: str, value: Any) -> int:
    """Return ``value`` if it is an int (not a bool).

    Raises:
        TypeError: It is not (the message names the argument).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__qualname__}")
    return value


def check_flag(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool.

    Raises:
        TypeError: It is not (the message names the argument).
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__qualname__}")
    return value


def window(items: Sequence[_T], offset: int, limit: int | None) -> Sequence[_T]:
    """Return ``items[offset:][:limit]`` (negative offset counts from the end)."""
    part = items[offset:]
    return part if limit is None else part[:limit]


class BaseChatStore(LlamaIndexBaseChatStore, ABC):
    """Ordered message histories of many conversations, each under a string key.

    With ``llama-index-core`` installed this is a subclass of LlamaIndex's
    ``BaseChatStore`` (every store goes straight into ``ChatMemoryBuffer``), and
    messages are LlamaIndex's ``ChatMessage``; without it, core's own model.

    Keys: any ``str`` without NUL, up to 256 characters and 1,024 UTF-8 bytes,
    works on every backend; anything else raises :class:`InvalidKeyError`.
    Messages are :class:`ChatMessage` values (a LlamaIndex ``ChatMessage`` or a
    dict in the wire shape is converted); anything else raises
    :class:`InvalidMessageError`. Messages returned are new objects: changing
    them never changes the store. A missing key reads as an empty conversation.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    max_key_bytes: ClassVar[int] = MAX_KEY_BYTES
    """The longest key in UTF-8 bytes this backend stores (never below 1,024)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = [f"async_{n}" for n in _ASYNC_ALIASES if f"async_{n}" in cls.__dict__]
        if overridden:
            raise TypeError(
                f"{cls.__qualname__} overrides {', '.join(overridden)}: implement the 'a*' "
                "method instead; async_* names always delegate to it"
            )

    def __init__(self, /, **data: Any) -> None:
        """Build the store from its fields (see the class docstring); never connects.

        Raises:
            TypeError: An argument this store does not take (named, with the closest
                one it does take).
        """
        try:
            super().__init__(**data)
        except ValidationError as exc:
            unknown = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden"]
            if not unknown:
                raise
            raise TypeError(self._unknown_arguments(unknown)) from None

    @classmethod
    def _unknown_arguments(cls, names: list[str]) -> str:
        known = [n for n, f in cls.model_fields.items() if not n.startswith("_")]
        hints = []
        for name in names:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return (
            f"{cls.__name__} got unexpected argument{'s' if len(names) > 1 else ''} "
            f"{', '.join(hints)}; it takes: {', '.join(sorted(known))}"
        )

    def __getstate__(self) -> dict[str, Any]:
        """Refuse to pickle: a store holds connections, and its secrets must not travel.

        Raises:
            TypeError: Always, saying how to move a store between processes instead.
        """
        raise TypeError(
            f"a {type(self).__name__} cannot be pickled: it holds connections and secrets. "
            "Send store.to_dict() (no secrets) and rebuild it with "
            "chat_store_from_dict(data, **secrets) on the other side"
        )

    @classmethod
    def class_name(cls) -> str:
        """Return the name written as ``class_name`` in dumps (unique per store class)."""
        return cls.__name__

    @model_serializer(mode="wrap")
    def _dump_with_class_name(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        data["class_name"] = self.class_name()
        return data

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """Return the configuration (with ``class_name``, without secrets).

        ``kwargs`` go to ``model_dump`` (as in LlamaIndex's ``to_dict``).
        """
        return self.model_dump(**kwargs)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from a URL of one of this backend's schemes (it does not connect yet).

        ``options`` are constructor arguments that the URL does not carry (or
        overrides of its query parameters). :func:`chat_store_from_url` picks the
        class by the URL's scheme and calls this.

        Raises:
            CapabilityNotSupportedError: This store class has no URL form.
            ConfigurationError: The URL does not describe a valid configuration.
        """
        raise CapabilityNotSupportedError(f"{cls.__qualname__} cannot be built from a URL")

    @classmethod
    def from_dict(cls, data: dict[str, Any], **secrets: Any) -> Self:  # type: ignore[override,unused-ignore]
        """Rebuild a store from :meth:`to_dict` output plus the secrets it left out."""
        fields = {k: v for k, v in data.items() if k != "class_name"}
        return cls(**fields, **secrets)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """The optional behaviour this instance has."""
        return frozenset()

    def _check_key(self, key: Any) -> str:
        """Return ``key`` if it is a valid conversation key.

        Raises:
            InvalidKeyError: Not a str, empty, contains NUL, or longer than the limits.
        """
        if not isinstance(key, str):
            raise InvalidKeyError(f"key must be a str, got {type(key).__qualname__}")
        if not key:
            raise InvalidKeyError("key must not be empty")
        if "\x00" in key:
            raise InvalidKeyError(f"key must not contain NUL: {key!r}")
        try:
            # ASCII (almost every key) is one byte a character and holds no surrogate.
            size = len(key) if key.isascii() else len(key.encode("utf-8"))
        except UnicodeEncodeError:
            # A lone surrogate is not text: no backend can store it as the key it is.
            raise InvalidKeyError(
                f"key must be valid Unicode text, without lone surrogates: {key!r}"
            ) from None
        if size > type(self).max_key_bytes:
            raise InvalidKeyError(
                f"key is {size} UTF-8 bytes; {type(self).__name__} stores at most "
                f"{type(self).max_key_bytes}"
            )
        return key

    # -- sync API: every backend implements these ---------------------------------------------

    @abstractmethod
    def get_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Return ``messages[offset:][:limit]`` in insertion order (``[]`` for a missing key).

        A negative ``offset`` counts from the end (``offset=-20``: the last 20). With
        ``tool_safe=True`` the window widens just enough never to start on a tool result whose
        call lies before it, nor to end between a call and its results
        (:func:`~llama_index.storage.chat_store.core.tools.safe_window`): what it returns can
        go to a chat API as it is. A store implements it with
        :func:`~llama_index.storage.chat_store.core.tools.read_tool_safe` over its plain read.

        Raises:
            ValueError: ``limit`` is negative.
        """

    @abstractmethod
    def count_messages(self, key: str) -> int:
        """Return the number of messages under ``key`` (0 for a missing key)."""

    @abstractmethod
    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append ``message`` atomically, or insert it at ``idx`` like ``list.insert``."""

    @abstractmethod
    def add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Append ``messages`` atomically, in order (``[]`` changes nothing)."""

    @abstractmethod
    def set_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Replace the conversation atomically (``[]`` removes the key)."""

    @abstractmethod
    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Remove the conversation; return its messages in order, or ``None`` if it had none."""

    @abstractmethod
    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove the message at ``idx`` (negative counts from the end); ``None`` if out of range.

        Two concurrent callers never receive the same message.
        """

    @abstractmethod
    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Remove and return the last message; ``None`` when there is none."""

    @abstractmethod
    def delete_oldest_messages(
        self, key: str, n: int, *, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Remove the first ``n`` messages (fewer if shorter); return them in order.

        With ``tool_safe=True`` it also removes the tool results that would otherwise lead what
        is left (their call is among the first ``n``), in the same atomic change
        (:func:`~llama_index.storage.chat_store.core.tools.safe_trim_count`).

        Raises:
            TypeError: ``n`` is not an int or ``tool_safe`` not a bool.
        """

    @abstractmethod
    def iter_keys(self) -> Iterator[str]:
        """Yield the keys of this store that hold messages, in pages (constant memory)."""

    @abstractmethod
    def clear(self) -> None:
        """Remove every conversation of this store (its namespace or table only)."""

    def get_keys(self) -> list[str]:
        """Return the keys of this store that hold messages, without duplicates."""
        return list(self.iter_keys())

    # -- the conversation catalog (Capability.CATALOG; see core.catalog) --------------------

    def list_conversations(
        self, prefix: str | None = None, after: str | None = None, limit: int = 100
    ) -> ConversationPage:
        """Return a page of conversations: keys starting with ``prefix``, after ``after``, in order.

        Pass the page's ``next_after`` as ``after`` for the next one. Stable under concurrent
        writes: a key present for the whole walk is listed exactly once.

        Raises:
            CapabilityNotSupportedError: The store keeps no catalog (no Capability.CATALOG).
        """
        raise self._no_catalog()

    def get_conversation(self, key: str) -> ConversationInfo | None:
        """Return what the catalog holds for ``key`` (``None``: no messages)."""
        raise self._no_catalog()

    def set_metadata(self, key: str, metadata: Mapping[str, Any]) -> ConversationInfo:
        """Merge ``metadata`` into the conversation's (``None`` values remove keys), atomically.

        Raises:
            ConversationNotFoundError: The conversation holds no messages.
            PayloadTooLargeError: The merged metadata would be over ``MAX_METADATA_BYTES``.
            TypeError: ``metadata`` is not a mapping of str to JSON values.
        """
        raise self._no_catalog()

    def _no_catalog(self) -> CapabilityNotSupportedError:
        return CapabilityNotSupportedError(
            f"{type(self).__name__} keeps no conversation catalog (Capability.CATALOG): "
            "list keys with iter_keys() and count with count_messages()"
        )

    def close(self) -> None:
        """Release clients and pools; the store reconnects if used again."""

    def as_llama_index(self) -> Self:
        """Return this store: it already is LlamaIndex's ``BaseChatStore`` (kept for old code).

        ``ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key="user1")`` takes
        the store itself.

        Raises:
            BackendImportError: ``llama-index-core`` is not installed (the ``llama-index``
                extra), so the store cannot be one of LlamaIndex's.
        """
        if not LLAMA_INDEX:
            raise BackendImportError(
                "using a chat store with LlamaIndex needs llama-index-core: "
                "pip install 'llama-index-storage-chat-store-core[llama-index]'"
            )
        return self

    # -- async API: worker-thread defaults, overridden by backends with async drivers --------

    async def aget_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Async :meth:`get_messages`."""
        # ``tool_safe`` goes on only when asked for: a store written before it keeps working.
        safe = {"tool_safe": tool_safe} if tool_safe is not False else {}
        return await asyncio.to_thread(self.get_messages, key, offset=offset, limit=limit, **safe)

    async def acount_messages(self, key: str) -> int:
        """Async :meth:`count_messages`."""
        return await asyncio.to_thread(self.count_messages, key)

    async def aadd_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Async :meth:`add_message`."""
        await asyncio.to_thread(self.add_message, key, message, idx)

    async def aadd_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`add_messages`."""
        await asyncio.to_thread(self.add_messages, key, messages)

    async def aset_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`set_messages`."""
        await asyncio.to_thread(self.set_messages, key, messages)

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        """Async :meth:`delete_messages`."""
        return await asyncio.to_thread(self.delete_messages, key)

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Async :meth:`delete_message`."""
        return await asyncio.to_thread(self.delete_message, key, idx)

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        """Async :meth:`delete_last_message`."""
        return await asyncio.to_thread(self.delete_last_message, key)

    async def adelete_oldest_messages(
        self, key: str, n: int, *, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Async :meth:`delete_oldest_messages`."""
        safe = {"tool_safe": tool_safe} if tool_safe is not False else {}
        return await asyncio.to_thread(self.delete_oldest_messages, key, n, **safe)

    async def aget_keys(self) -> list[str]:
        """Async :meth:`get_keys`."""
        return [key async for key in self.aiter_keys()]

    async def aiter_keys(self) -> AsyncIterator[str]:
        """Async :meth:`iter_keys`."""
        for key in await asyncio.to_thread(self.get_keys):
            yield key

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        await asyncio.to_thread(self.clear)

    async def alist_conversations(
        self, prefix: str | None = None, after: str | None = None, limit: int = 100
    ) -> ConversationPage:
        """Async :meth:`list_conversations`."""
        return await asyncio.to_thread(self.list_conversations, prefix, after, limit)

    async def aget_conversation(self, key: str) -> ConversationInfo | None:
        """Async :meth:`get_conversation`."""
        return await asyncio.to_thread(self.get_conversation, key)

    async def aset_metadata(self, key: str, metadata: Mapping[str, Any]) -> ConversationInfo:
        """Async :meth:`set_metadata`."""
        return await asyncio.to_thread(self.set_metadata, key, metadata)

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        await asyncio.to_thread(self.close)

    # -- LlamaIndex's async names: final, always delegating to the a* methods --------------

    async def async_get_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Alias of :meth:`aget_messages` (LlamaIndex's name)."""
        safe = {"tool_safe": tool_safe} if tool_safe is not False else {}
        return await self.aget_messages(key, offset=offset, limit=limit, **safe)

    async def async_count_messages(self, key: str) -> int:
        """Alias of :meth:`acount_messages`."""
        return await self.acount_messages(key)

    async def async_add_message(
        self, key: str, message: ChatMessage, idx: int | None = None
    ) -> None:
        """Alias of :meth:`aadd_message` (LlamaIndex's name)."""
        await self.aadd_message(key, message, idx)

    async def async_add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Alias of :meth:`aadd_messages`."""
        await self.aadd_messages(key, messages)

    async def async_set_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Alias of :meth:`aset_messages` (LlamaIndex's name)."""
        await self.aset_messages(key, messages)

    async def async_delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Alias of :meth:`adelete_messages` (LlamaIndex's name)."""
        return await self.adelete_messages(key)

    async def async_delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Alias of :meth:`adelete_message` (LlamaIndex's name)."""
        return await self.adelete_message(key, idx)

    async def async_delete_last_message(self, key: str) -> ChatMessage | None:
        """Alias of :meth:`adelete_last_message` (LlamaIndex's name)."""
        return await self.adelete_last_message(key)

    async def async_delete_oldest_messages(
        self, key: str, n: int, *, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Alias of :meth:`adelete_oldest_messages`."""
        safe = {"tool_safe": tool_safe} if tool_safe is not False else {}
        return await self.adelete_oldest_messages(key, n, **safe)

    async def async_get_keys(self) -> list[str]:
        """Alias of :meth:`aget_keys` (LlamaIndex's name)."""
        return await self.aget_keys()

    # -- context managers ----------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
