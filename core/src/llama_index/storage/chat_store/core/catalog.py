"""The conversation catalog: what a store knows about each conversation, a page at a time.

``list_conversations(prefix=None, after=None, limit=100)`` returns a :class:`ConversationPage`:
conversations in key order (Unicode code point order, which is UTF-8 byte order) whose key
starts with ``prefix``, after the key ``after``; pass ``page.next_after`` as ``after`` for the
next page (``None``: this was the last). Paging by key is stable while conversations change: a
key present for the whole walk is listed exactly once. ``get_conversation(key)`` returns one
:class:`ConversationInfo` (``None`` for a conversation without messages) and
``set_metadata(key, mapping)`` merges ``mapping`` into its metadata.

Metadata is a JSON object of at most :data:`MAX_METADATA_BYTES` (the UTF-8 bytes of its names
and of its values as compact JSON, summed), merged key by key: a value of ``None`` removes that
key. It lives and dies with the conversation: removing the last message removes it. Times are
UTC.

Backends with a catalog report :attr:`Capability.CATALOG`; the others raise
:class:`CapabilityNotSupportedError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from llama_index.storage.chat_store.core.errors import (
    ConversationNotFoundError,
    PayloadTooLargeError,
)

__all__ = [
    "MAX_METADATA_BYTES",
    "ConversationInfo",
    "ConversationPage",
    "check_listing",
    "check_metadata",
    "conversation_not_found",
    "decode_metadata",
    "encode_value",
    "from_epoch_ms",
    "merged_metadata",
    "metadata_size",
    "metadata_too_large",
]

MAX_METADATA_BYTES = 8192
"""The most metadata a conversation holds: UTF-8 bytes of names and compact JSON values, summed."""


@dataclass(frozen=True)
class ConversationInfo:
    """One conversation as the catalog sees it."""

    key: str
    message_count: int
    created_at: datetime | None
    """When its first message was stored (this conversation: one emptied and begun again is new)."""
    updated_at: datetime | None
    """Its last change: of its messages or of its metadata."""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConversationPage:
    """A page of :meth:`list_conversations`."""

    conversations: list[ConversationInfo]
    next_after: str | None
    """Pass as ``after`` for the next page; ``None`` after the last one."""


def from_epoch_ms(value: Any) -> datetime | None:
    """A UTC datetime from epoch milliseconds (as stored: a number or its text), or ``None``."""
    if value is None or value == b"" or value == "":
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)


def check_listing(prefix: str | None, after: str | None, limit: int) -> None:
    """Validate ``list_conversations`` arguments.

    Raises:
        TypeError: ``prefix``/``after`` not a str or None, ``limit`` not an int.
        ValueError: ``limit`` below 1.
    """
    for name, value in (("prefix", prefix), ("after", after)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, got {type(value).__qualname__}")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {type(limit).__qualname__}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


def encode_value(value: Any, name: str = "") -> str:
    """A metadata value as compact JSON text.

    Raises:
        TypeError: It is not JSON (the message names ``name``).
    """
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata {name!r} is not JSON: {exc}") from exc


def check_metadata(mapping: Mapping[str, Any]) -> dict[str, str | None]:
    """Return ``mapping`` as ``{name: compact JSON text, or None to remove}``.

    Raises:
        TypeError: ``mapping`` is not a mapping of str names to JSON values.
        PayloadTooLargeError: ``mapping`` alone is over :data:`MAX_METADATA_BYTES`.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(mapping).__qualname__}")
    out: dict[str, str | None] = {}
    for name, value in mapping.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"metadata names must be non-empty str, got {name!r}")
        out[name] = None if value is None else encode_value(value, name)
    size = metadata_size({k: v for k, v in out.items() if v is not None})
    if size > MAX_METADATA_BYTES:
        raise metadata_too_large(size)
    return out


def metadata_size(encoded: Mapping[str, str]) -> int:
    """The size of metadata ``{name: JSON text}``: UTF-8 bytes of its names and values."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in encoded.items())


def metadata_too_large(size: int) -> PayloadTooLargeError:
    """The error for metadata of ``size`` bytes (over :data:`MAX_METADATA_BYTES`)."""
    return PayloadTooLargeError(
        f"conversation metadata would be {size} bytes (names and JSON values); a conversation "
        f"holds at most {MAX_METADATA_BYTES} (remove keys with None, or keep large values "
        "elsewhere)"
    )


def merged_metadata(
    current: Mapping[str, str], changes: Mapping[str, str | None]
) -> dict[str, str]:
    """Merge ``changes`` (from :func:`check_metadata`) into ``current`` ``{name: JSON text}``.

    Raises:
        PayloadTooLargeError: The result is over :data:`MAX_METADATA_BYTES`.
    """
    merged = dict(current)
    for name, value in changes.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    size = metadata_size(merged)
    if size > MAX_METADATA_BYTES:
        raise metadata_too_large(size)
    return merged


def conversation_not_found(key: str) -> ConversationNotFoundError:
    """The error of a catalog change to a conversation without messages."""
    return ConversationNotFoundError(f"no conversation holds messages at key {key!r}")


def decode_metadata(encoded: Mapping[str, str]) -> dict[str, Any]:
    """``{name: JSON text}`` as ``{name: value}``."""
    return {name: json.loads(text) for name, text in encoded.items()}
