"""Messages larger than one DynamoDB item: a head item plus chunk items (no I/O here).

A message whose item would pass DynamoDB's 400 KB limit is cut, at character boundaries, into
parts that each fit one item. The message item (the head) keeps part 0 in ``Message`` plus
``Parts`` (how many parts there are) and ``PartsId`` (a random token); parts ``1 .. Parts-1``
live in chunk items of the same partition at sort key ``-(token * 1000 + part)``.

* Negative sort keys lie outside every generation's range, so windows and counts see heads
  only: a chunked message is one message everywhere.
* Chunks hang off the token, not the position, so moving a message (insert, delete by index,
  a new generation) rewrites its head alone.
* Chunk items never change once written. They are written before or with the head that makes
  them visible and deleted after the last head referring to them is gone, so a reader that
  finds one missing knows the message was removed meanwhile.

Items written before chunking existed have no ``Parts``: each holds a whole message.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from llama_index.storage.chat_store.core import PayloadTooLargeError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PARTS",
    "PARTS_ID",
    "Fresh",
    "Head",
    "chunk_sort_key",
    "encode",
    "part_of",
    "valid",
]

MAX_MESSAGE_BYTES = 16_000_000
"""Largest message (its JSON, in UTF-8 bytes) the native layout stores: 40 items of 400 KB.
Beyond it a message belongs in object storage, referenced from the chat."""
PARTS, PARTS_ID = "Parts", "PartsId"
_PART_SPAN = 1000
_TOKEN_BITS = 100


@dataclass(frozen=True)
class Head:
    """A message item as stored: its ``Message`` text and, when chunked, where the rest is.

    Attributes:
        text: The whole message JSON, or part 0 of a chunked message.
        parts: How many parts the message has (1: not chunked).
        token: The id the chunk items' sort keys derive from (0: not chunked).
    """

    text: str
    parts: int = 1
    token: int = 0

    @property
    def chunked(self) -> bool:
        """Whether parts of the message live in chunk items."""
        return self.parts > 1

    def chunk_sort_keys(self) -> list[int]:
        """Return the sort keys of the chunk items, part 1 first."""
        return [chunk_sort_key(self.token, part) for part in range(1, self.parts)]


def chunk_sort_key(token: int, part: int) -> int:
    """Return the sort key of part ``part`` (>= 1) of the message with ``token``."""
    return -(token * _PART_SPAN + part)


def part_of(sort_key: int, token: int) -> int:
    """Return which part of the message with ``token`` the chunk at ``sort_key`` holds."""
    return -sort_key - token * _PART_SPAN


def valid(parts: int, token: int) -> bool:
    """Whether a head's ``Parts``/``PartsId`` pair can have been written by us."""
    return 2 <= parts < _PART_SPAN and 0 < token <= 1 << _TOKEN_BITS


@dataclass
class Fresh:
    """The chunks of the messages one operation adds, kept across its retries.

    Attributes:
        rest: ``(token, [part 1, part 2, ...])`` per chunked message.
        expires: The expiry written on the chunk items (None: not written yet, or no ttl).
        written: Whether the chunk items are already stored (outside any transaction).
    """

    rest: list[tuple[int, list[str]]] = field(default_factory=list)
    expires: int | None = None
    written: bool = False


def _split(data: bytes, budget: int) -> list[str]:
    """Cut UTF-8 ``data`` into texts of at most ``budget`` bytes, never inside a character."""
    parts, start = [], 0
    while start < len(data):
        end = min(start + budget, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a continuation byte
            end -= 1
        parts.append(data[start:end].decode("utf-8", "surrogatepass"))
        start = end
    return parts


def encode(key: str, messages: Sequence[str], budget: int) -> tuple[list[Head], Fresh]:
    """Return the heads of ``messages`` and the chunks of those over ``budget`` bytes.

    Args:
        key: The conversation (for error messages).
        messages: Message JSON texts.
        budget: The most bytes of message text one item holds beside its other attributes.

    Raises:
        PayloadTooLargeError: A message is over :data:`MAX_MESSAGE_BYTES` (nothing is written).
    """
    heads: list[Head] = []
    fresh = Fresh()
    for position, message in enumerate(messages):
        # surrogatepass: lone surrogates in text are data, kept as they are
        data = message.encode("utf-8", "surrogatepass")
        if len(data) > MAX_MESSAGE_BYTES:
            raise PayloadTooLargeError(
                f"message at position {position} of the batch for key {key!r} is "
                f"{len(data)} bytes of JSON; DynamoDBChatStore stores messages up to "
                f"{MAX_MESSAGE_BYTES} bytes (16 MB). Nothing was written."
            )
        if len(data) <= budget:
            heads.append(Head(message))
            continue
        parts = _split(data, budget)
        token = secrets.randbits(_TOKEN_BITS) + 1
        heads.append(Head(parts[0], len(parts), token))
        fresh.rest.append((token, parts[1:]))
    return heads, fresh
