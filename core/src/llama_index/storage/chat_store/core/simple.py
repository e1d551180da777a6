"""An in-memory chat store, persisted to a JSON file in LlamaIndex's format."""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import (
    Field,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticSerializationError
from typing_extensions import NotRequired, TypedDict

from llama_index.storage.chat_store.core._file import write_atomically
from llama_index.storage.chat_store.core._memory_catalog import CatalogInMemory, Entry
from llama_index.storage.chat_store.core.capabilities import Capability
from llama_index.storage.chat_store.core.errors import (
    ConfigurationError,
    CorruptDataError,
    SerializationError,
)
from llama_index.storage.chat_store.core.messages import (
    ChatMessage,
    DecodedMessage,
    coerce_message,
    coerce_messages,
    copy_message,
    copy_messages,
    message_to_json,
)
from llama_index.storage.chat_store.core.store import (
    BaseChatStore,
    check_flag,
    check_window,
    window,
)
from llama_index.storage.chat_store.core.tools import read_tool_safe, safe_trim_count

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_PERSIST_PATH", "JsonFileChatStore", "SimpleChatStore"]

DEFAULT_PERSIST_PATH = "chat_store.json"


class _StoreFile(TypedDict):
    store: dict[str, list[DecodedMessage]]
    catalog: NotRequired[dict[str, Entry]]
    class_name: NotRequired[str]


_FILE = TypeAdapter(_StoreFile)


class SimpleChatStore(CatalogInMemory, BaseChatStore):
    """Conversations in a dict in memory; ``persist`` writes them to a JSON file.

    The file format is LlamaIndex's (``{"store": {key: [message, ...]},
    "class_name": "SimpleChatStore"}``), and every historical LlamaIndex encoding
    of it loads. Thread-safe; keys come back in first-insertion order (a key that
    is emptied and refilled moves to the end). Not shared across processes.
    """

    store: dict[str, list[DecodedMessage]] = {}
    catalog: dict[str, Entry] = Field(default_factory=dict, repr=False)
    """Each conversation's catalog entry (written to the file beside ``store``; LlamaIndex's
    ``SimpleChatStore`` reads such a file and ignores it)."""

    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)
    _persist_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _guard(self) -> threading.RLock:
        # pydantic serves private attributes through __getattr__ (about 1.3 µs per access,
        # more than a whole append); reading its slot directly costs a dict lookup.
        return self.__pydantic_private__["_lock"]  # type: ignore[index,no-any-return]

    def model_post_init(self, context: Any, /) -> None:
        """Drop empty conversations given to the constructor (they hold no messages)."""
        self.store = {k: list(v) for k, v in self.store.items() if v}
        self.catalog = {k: v for k, v in self.catalog.items() if k in self.store}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the conversations (the store holds no connection and no secret)."""
        with self._guard:
            return {
                "store": {key: list(messages) for key, messages in self.store.items()},
                "catalog": copy.deepcopy(self.catalog),
            }

    def __setstate__(self, state: dict[str, Any]) -> None:
        SimpleChatStore.__init__(self, **state)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        # pydantic's own deep copy would copy the lock too, which cannot be copied.
        return type(self)(**copy.deepcopy(self.__getstate__(), memo))

    @model_serializer(mode="wrap")
    def _dump_locked(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        with self._guard:
            data: dict[str, Any] = handler(self)
        if not data.get("catalog", True):
            del data["catalog"]  # no entries: exactly LlamaIndex's format
        data["class_name"] = self.class_name()
        return data

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build an empty in-memory store from ``memory://`` (``options`` go to the constructor).

        Raises:
            ConfigurationError: The URL is not ``memory://`` (it takes no host, path or query).
        """
        parts = urlsplit(url)
        if parts.scheme.split("+", 1)[0].lower() != "memory" or any(
            (parts.netloc, parts.path, parts.query, parts.fragment)
        ):
            raise ConfigurationError(f"{cls.__name__} takes the URL 'memory://', got {url!r}")
        return cls(**options)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """CATALOG: each conversation's count, times and metadata (kept in ``catalog``)."""
        return frozenset({Capability.CATALOG})

    # -- reads -----------------------------------------------------------------------------

    def get_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Return ``messages[offset:][:limit]`` as copies (``[]`` for a missing key)."""
        key = self._check_key(key)
        check_window(offset, limit, tool_safe)
        with self._guard:
            held = self.store.get(key, ())
            if tool_safe:
                return copy_messages(read_tool_safe(partial(window, held), offset, limit))
            return copy_messages(window(held, offset, limit))

    def count_messages(self, key: str) -> int:
        """Return the number of messages under ``key``."""
        # No lock: one dict lookup and one len() are atomic (a memory counts every turn). The
        # key is checked all the same: the constructor and a loaded file may hold any key.
        return len(self.store.get(self._check_key(key), ()))

    def iter_keys(self) -> Iterator[str]:
        """Yield the keys in first-insertion order (a snapshot taken at the first step)."""
        with self._guard:
            keys = list(self.store)
        yield from keys

    def get_keys(self) -> list[str]:
        """Return the keys in first-insertion order."""
        with self._guard:
            return list(self.store)

    # -- writes ----------------------------------------------------------------------------

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append ``message`` (or insert it at ``idx`` like ``list.insert``)."""
        key = self._check_key(key)
        message = _private_saveable(message)
        with self._guard:
            began = key not in self.store
            messages = self.store.setdefault(key, [])
            if idx is None:
                messages.append(message)
            else:
                messages.insert(idx, message)
            self._stamp(key, began)
            self._changed()

    def add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Append ``messages`` in order."""
        key = self._check_key(key)
        new = [_private_saveable(m) for m in coerce_messages(messages, copy=False)]
        if not new:
            return
        with self._guard:
            began = key not in self.store
            self.store.setdefault(key, []).extend(new)
            self._stamp(key, began)
            self._changed()

    def set_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Replace the conversation (``[]`` removes the key)."""
        key = self._check_key(key)
        new = [_private_saveable(m) for m in coerce_messages(messages, copy=False)]
        with self._guard:
            began = key not in self.store
            if new:
                self.store[key] = new
            else:
                self.store.pop(key, None)
            self._stamp(key, began)
            self._changed()

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Remove the conversation and return its messages (``None`` if it had none)."""
        key = self._check_key(key)
        with self._guard:
            removed = self.store.pop(key, None)
            if removed is not None:
                self._stamp(key, False)
                self._changed()
            return removed or None

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove the message at ``idx``; ``None`` when out of range."""
        key = self._check_key(key)
        with self._guard:
            messages = self.store.get(key)
            if not messages or not -len(messages) <= idx < len(messages):
                return None
            removed = messages.pop(idx)
            self._drop_if_empty(key)
            return removed

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Remove and return the last message (``None`` when empty)."""
        return self.delete_message(key, -1)

    def delete_oldest_messages(
        self, key: str, n: int, *, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Remove the first ``n`` messages and return them in order (see the base class)."""
        key = self._check_key(key)
        check_flag("tool_safe", tool_safe)
        if n <= 0:
            return []
        with self._guard:
            messages = self.store.get(key)
            if not messages:
                return []
            if tool_safe:
                n = safe_trim_count(messages, n)
            removed = messages[:n]
            del messages[:n]
            self._drop_if_empty(key)
            return removed

    def clear(self) -> None:
        """Remove every conversation."""
        with self._guard:
            self.store.clear()
            self.catalog.clear()
            self._changed()

    def _drop_if_empty(self, key: str) -> None:
        if not self.store.get(key, True):
            del self.store[key]
        self._stamp(key, False)
        self._changed()

    def _changed(self) -> None:
        """Hook called under the lock after every change (file-backed subclasses persist)."""

    def _file_text(self) -> str:
        """Return the persisted file's text (called under the lock).

        Raises:
            SerializationError: A message holds a value JSON cannot carry.
        """
        try:
            return self.model_dump_json()
        except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
            raise SerializationError(f"cannot serialize the store: {str(exc)[:300]}") from exc

    # -- persistence -----------------------------------------------------------------------

    def persist(
        self, persist_path: str | os.PathLike[str] = DEFAULT_PERSIST_PATH, fs: Any = None
    ) -> None:
        """Write the store to ``persist_path`` in LlamaIndex's file format.

        On the local filesystem the write is atomic (temp file, fsync, rename): a
        crash leaves the previous file or the new one, never a torn one. Missing
        parent directories are created. ``fs`` is an optional fsspec filesystem;
        its writes are as atomic as that filesystem makes them.

        Raises:
            OSError: The file cannot be written (the previous file is untouched).
        """
        # One persist at a time, snapshot and write together: otherwise a thread holding an
        # older snapshot could write after a newer one and the file would go back in time.
        with self.__pydantic_private__["_persist_lock"]:  # type: ignore[index]
            with self._guard:
                text = self._file_text()
            if fs is None:
                write_atomically(Path(persist_path), text)
            else:
                parent = os.path.dirname(os.fspath(persist_path))
                if parent:
                    fs.makedirs(parent, exist_ok=True)
                with fs.open(os.fspath(persist_path), "w", encoding="utf-8") as f:
                    f.write(text)

    @classmethod
    def from_persist_path(
        cls, persist_path: str | os.PathLike[str] = DEFAULT_PERSIST_PATH, fs: Any = None
    ) -> Self:
        """Load a store written by ``persist`` or by any LlamaIndex version.

        A missing file loads as an empty store.

        Raises:
            CorruptDataError: The file is not a chat store file (names the path).
        """
        path = os.fspath(persist_path)
        try:
            if fs is None:
                data = Path(path).read_bytes()
            else:
                if not fs.exists(path):
                    return cls()
                with fs.open(path, "rb") as f:
                    data = f.read()
        except FileNotFoundError:
            return cls()
        return cls._from_file_bytes(data, source=path)

    @classmethod
    def _from_file_bytes(cls, data: bytes, *, source: str) -> Self:
        try:
            if data.lstrip()[:1] == b'"':
                # LlamaIndex 0.10.x wrote the JSON document as a JSON string.
                inner = json.loads(data)
                if not isinstance(inner, str):
                    raise ValueError("a JSON string that does not hold a document")
                data = inner.encode("utf-8")
            parsed = _FILE.validate_json(data)
        except (ValidationError, ValueError) as exc:
            raise CorruptDataError(
                f"{source} is not a chat store file ({type(exc).__name__}: {str(exc)[:300]})"
            ) from exc
        return cls(store=parsed["store"], catalog=parsed.get("catalog", {}))

    def json(self, **kwargs: Any) -> str:
        """Return the file format as a string (LlamaIndex's name for ``model_dump_json``)."""
        return self.model_dump_json(**kwargs)

    @classmethod
    def parse_raw(cls, b: str | bytes, **kwargs: Any) -> Self:
        """Load from a string in any of the file encodings (LlamaIndex's name).

        Raises:
            CorruptDataError: The text is not a chat store document.
        """
        data = b.encode("utf-8") if isinstance(b, str) else b
        return cls._from_file_bytes(data, source="the given text")


class JsonFileChatStore(SimpleChatStore):
    """A :class:`SimpleChatStore` written through to a JSON file on every change.

    Every change rewrites the whole file atomically (temp file, fsync, rename),
    so each write costs O(size of the store): meant for small apps, demos and
    tests. The file is in LlamaIndex's ``SimpleChatStore`` format, so
    ``SimpleChatStore.from_persist_path`` (ours or LlamaIndex's) reads it. The
    file is read once, when the store is built; a missing file is an empty store
    and is created by the first change. One process at a time: the store is
    PERSISTENT, not SHARED (another process's writes are not seen and would be
    overwritten). If a write fails, the store reloads the file, so memory and
    file never disagree, and the error is raised.

    URL: ``json:///absolute/path/chat_store.json``.
    """

    path: str
    """The JSON file (made absolute)."""
    store: dict[str, list[DecodedMessage]] = Field(default_factory=dict, exclude=True, repr=False)
    catalog: dict[str, Entry] = Field(default_factory=dict, exclude=True, repr=False)

    @field_validator("path", mode="before")
    @classmethod
    def _absolute(cls, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike)):
            return os.path.abspath(os.fspath(value))
        return value

    def __init__(self, **data: Any) -> None:
        """Open the JSON file ``path`` (read now; created by the first change).

        Raises:
            ConfigurationError: ``store=`` was given (the file holds the conversations).
            CorruptDataError: The file is not a chat store file (names the path).
        """
        if data.get("store"):
            raise ConfigurationError(
                f"{type(self).__name__} reads its conversations from its file; "
                "add them with add_messages/set_messages instead of store="
            )
        super().__init__(**data)
        self.store, self.catalog = _read_store_file(self.path)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the path only: the file holds the conversations."""
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        JsonFileChatStore.__init__(self, **state)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from ``json:///absolute/path.json`` (``options`` go to the constructor).

        Raises:
            ConfigurationError: The URL has a host other than ``localhost``, a
                relative or empty path, or a query.
        """
        parts = urlsplit(url)
        path = unquote(parts.path)
        if (
            parts.scheme.split("+", 1)[0].lower() != "json"
            or parts.netloc not in ("", "localhost")
            or not os.path.isabs(path)
            or parse_qsl(parts.query)
            or parts.fragment
        ):
            raise ConfigurationError(
                f"{cls.__name__} takes a URL like 'json:///absolute/path/chat_store.json' "
                f"(three slashes, no query), got {url!r}"
            )
        return cls(path=path, **options)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """PERSISTENT (a new instance over the same file sees the data) and CATALOG."""
        return frozenset({Capability.PERSISTENT, Capability.CATALOG})

    @classmethod
    def from_persist_path(
        cls, persist_path: str | os.PathLike[str] = DEFAULT_PERSIST_PATH, fs: Any = None
    ) -> Self:
        """Open ``persist_path`` as a write-through store (``fs`` is not supported).

        Raises:
            ConfigurationError: ``fs`` was given.
            CorruptDataError: The file is not a chat store file.
        """
        if fs is not None:
            raise ConfigurationError(f"{cls.__name__} writes only to the local filesystem")
        return cls(path=os.fspath(persist_path))

    def _file_text(self) -> str:
        try:
            data: _StoreFile = {"store": self.store, "class_name": "SimpleChatStore"}
            if self.catalog:
                data = {"store": self.store, "catalog": self.catalog, **data}
            return _FILE.dump_json(data).decode()
        except (PydanticSerializationError, ValueError, TypeError) as exc:
            raise SerializationError(f"cannot serialize the store for {self.path}: {exc}") from exc

    def _changed(self) -> None:
        try:
            write_atomically(Path(self.path), self._file_text())
        except BaseException:
            # The change is in memory but not on disk: go back to what the file holds.
            self.store, self.catalog = _read_store_file(self.path)
            raise


def _private_saveable(value: Any) -> ChatMessage:
    """Return a private copy of a message given, checked to be writable to the file.

    Checked on the way in, so one bad message never makes every later ``persist`` fail.

    Raises:
        InvalidMessageError: The value is not a message.
        SerializationError: The message holds a value JSON cannot carry (an arbitrary
            object, a lone surrogate, nesting too deep).
    """
    message = coerce_message(value, copy=False)
    message_to_json(message)  # before copying: the copy would recurse as deep as the nesting
    return copy_message(message) if message is value else message


def _read_store_file(path: str) -> tuple[dict[str, list[ChatMessage]], dict[str, Entry]]:
    """Return the conversations in a chat store file and their catalog (empty: no file)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return {}, {}
    loaded = SimpleChatStore._from_file_bytes(data, source=path)
    return loaded.store, loaded.catalog
