"""The meta record: what layouts keeping one per conversation share, written once.

DynamoDB, Azure Tables and Tablestore keep each message in its own item (entity, row) and
one meta record per conversation, which every change rewrites by one conditional write:
the positions of its first and next message (so a window or a count never reads the
messages), a version (or ETag) the write is conditional on, the ids of its last changes (so
a change resent after a lost reply finds its own commit), and its catalog entry (created
and updated times, metadata). How each storage holds those fields is its own; the rules
are these, the same for every backend:

* a window ``messages[offset:][:limit]`` is the positions :func:`span` gives;
* the record of changes keeps the last ids (:func:`recorded`);
* a conditional write that lost a race waits (:func:`backoff`), reads again and retries,
  until :func:`contention_error`: one loop, :meth:`Race.run`, for every change of every
  backend (an attempt that already holds what it lost to retries at once,
  :class:`RetryAtOnceError`); a resent one whose record cannot tell whether it was
  applied raises :func:`unknown_outcome`;
* the catalog entry (:class:`Entry`) lives and dies with the messages: a change that
  begins the conversation stamps both times and drops old metadata, one that empties it
  drops all three, any other stamps ``updated``; times are epoch milliseconds from the
  writing client's clock; metadata is one JSON object's text;
* a catalog page in key order ends before :func:`prefix_end` of its prefix.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from llama_index.storage.chat_store.core._plans import ConflictError, Plan, Sleep
from llama_index.storage.chat_store.core.catalog import (
    ConversationInfo,
    decode_metadata,
    encode_value,
    from_epoch_ms,
)
from llama_index.storage.chat_store.core.errors import (
    BackendUnavailableError,
    ChatStoreError,
    CorruptDataError,
    corrupt_data_remedy,
)

__all__ = [
    "Entry",
    "Race",
    "RetryAtOnceError",
    "backoff",
    "contention_error",
    "now_ms",
    "prefix_end",
    "recorded",
    "span",
    "unknown_outcome",
]


def now_ms() -> int:
    """This client's clock in epoch milliseconds (the stores have no server clock to read)."""
    return time.time_ns() // 1_000_000


def span(count: int, offset: int, limit: int | None) -> tuple[int, int]:
    """The positions ``[lo, hi)`` of ``messages[offset:][:limit]`` among ``count`` messages.

    A negative ``offset`` counts from the end; ``limit`` is ``None`` or not negative.
    """
    lo = min(count, offset if offset >= 0 else max(0, count + offset))
    return lo, count if limit is None else min(count, lo + limit)


def recorded(ops: Iterable[str], op: str, keep: int) -> tuple[str, ...]:
    """The ids of a record of the last ``keep`` changes after change ``op`` committed."""
    return (*ops, op)[-keep:]


def backoff(attempt: int, first: float = 0.002, cap: float = 0.05) -> Sleep:
    """The pause before attempt ``attempt + 1`` of a write that lost a race.

    Drawn between 0 and ``first * 2**attempt`` seconds, at most ``cap`` (full jitter: racing
    writers spread out).
    """
    return Sleep(random.uniform(0, min(cap, first * 2 ** min(attempt, 30))))


def contention_error(key: str, where: str, attempts: int) -> ChatStoreError:
    """The error of a change that lost the race to other writers ``attempts`` times."""
    return ChatStoreError(
        f"conversation {key!r} in {where}: too much contention, gave up after {attempts} attempts"
    )


def unknown_outcome(key: str, why: str) -> BackendUnavailableError:
    """The error of a resent change whose record cannot tell whether it was applied."""
    return BackendUnavailableError(
        f"a change of key {key!r} was resent after its reply was lost and failed its "
        f"condition, and {why}: the outcome is unknown (the change was applied once or not "
        "at all, read the conversation to know)"
    )


T = TypeVar("T")


class RetryAtOnceError(ConflictError):
    """An attempt lost and already holds the state it lost to: the next starts at once.

    E.g. it planned on a remembered state and the failed condition returned the current
    one, or it read the state again and found it moved: waiting would not make the next
    attempt likelier to win. It still counts as one of :attr:`Race.attempts`.
    """


@dataclass(frozen=True)
class Race:
    """How a backend's conditional changes retry after losing a race to another writer.

    ``attempts`` before :func:`contention_error`; between them a :func:`backoff` drawn from
    ``first`` doubling up to ``cap`` seconds (a backend whose requests take tens of
    milliseconds waits longer than one answering in a millisecond).
    """

    attempts: int = 200
    first: float = 0.002
    cap: float = 0.05

    def run(self, key: str, where: str, attempt: Callable[[], Plan[T]]) -> Plan[T]:
        """Run the plan ``attempt()`` until it ends without :class:`ConflictError`.

        Each attempt reads what it needs afresh: one that loses (a conditional step of it,
        or the attempt itself, raised :class:`ConflictError`) waits and starts over, at once
        when it raised :class:`RetryAtOnceError`.

        Raises:
            ChatStoreError: Every attempt lost (:func:`contention_error` naming ``key`` in
                ``where``).
        """
        for n in range(self.attempts):
            try:
                return (yield from attempt())
            except RetryAtOnceError:
                continue
            except ConflictError:
                pass
            yield backoff(n, self.first, self.cap)
        raise contention_error(key, where, self.attempts)


def prefix_end(prefix: str) -> str | None:
    """The least string above every key starting with ``prefix`` (``None``: no bound).

    Keys starting with ``prefix`` sort before ``prefix`` with its last character incremented,
    and every other key after ``prefix`` sorts at or after it (code point order).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            following = 0xE000 if 0xD800 <= last + 1 <= 0xDFFF else last + 1  # no surrogates
            return "".join(chars) + chr(following)
    return None


@dataclass(frozen=True)
class Entry:
    """A conversation's catalog entry as its meta record keeps it.

    ``created`` and ``updated`` are epoch milliseconds (``None``: not known, as on records
    written before the catalog), ``metadata`` the text of a JSON object (``None``: none).
    """

    created: int | None = None
    updated: int | None = None
    metadata: str | None = None

    @classmethod
    def read(cls, where: str, key: str, created: Any, updated: Any, metadata: Any) -> Entry:
        """The entry of stored values, checked.

        Raises:
            CorruptDataError: A time is not an int or the metadata not text (naming the key).
        """
        if not (_epoch_ms(created) and _epoch_ms(updated)):
            bad, value = ("created", created) if not _epoch_ms(created) else ("updated", updated)
            raise _corrupt(where, key, f"{bad} time is not epoch milliseconds", value)
        if metadata is not None and type(metadata) is not str:
            raise _corrupt(where, key, "metadata is not text", metadata)
        return cls(created, updated, metadata)

    def changed(self, before: int, after: int, now: int | None = None) -> Entry:
        """The entry after a change from ``before`` to ``after`` messages.

        Emptied: no entry. Begun: both times now, no metadata. Else ``updated`` is now (never
        going back, where it is known).
        """
        now = now_ms() if now is None else now
        if after == 0:
            return Entry()
        if before == 0:
            return Entry(now, now)
        return replace(self, updated=max(now, self.updated or 0))

    def encoded(self, where: str, key: str) -> dict[str, str]:
        """The metadata as ``{name: compact JSON text}``.

        Raises:
            CorruptDataError: It is not a JSON object (naming the key).
        """
        if self.metadata is None:
            return {}
        try:
            values = json.loads(self.metadata)
        except ValueError:
            values = None
        if not isinstance(values, dict):
            raise _corrupt(where, key, "metadata is not a JSON object", self.metadata)
        return {name: encode_value(value, name) for name, value in values.items()}

    def with_metadata(self, encoded: Mapping[str, str], now: int | None = None) -> Entry:
        """The entry after metadata ``{name: JSON text}`` was set (``updated`` as ``changed``)."""
        text = "{" + ",".join(f"{encode_value(n)}:{t}" for n, t in encoded.items()) + "}"
        stamp = max(now_ms() if now is None else now, self.updated or 0)
        return replace(self, metadata=text if encoded else None, updated=stamp)

    def info(self, where: str, key: str, count: int) -> ConversationInfo:
        """The catalog entry of the conversation ``key`` of ``count`` messages.

        Raises:
            CorruptDataError: The metadata is not a JSON object.
        """
        metadata = {} if self.metadata is None else decode_metadata(self.encoded(where, key))
        created, updated = from_epoch_ms(self.created), from_epoch_ms(self.updated)
        return ConversationInfo(key, count, created, updated, metadata)


def _epoch_ms(value: Any) -> bool:
    return value is None or type(value) is int


def _corrupt(where: str, key: str, what: str, value: Any) -> CorruptDataError:
    return CorruptDataError(
        f"conversation {key!r} in {where}: its {what}: {value!r:.200} ({corrupt_data_remedy(key)})",
        key=key,
        data=value if isinstance(value, (str, bytes)) else repr(value),
    )
