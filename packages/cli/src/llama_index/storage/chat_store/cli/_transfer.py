"""Streaming export, import and copy between chat stores.

Every conversation is read in pages (``get_messages(key, offset=, limit=)``) and
keys come from ``iter_keys``, so memory stays bounded by a page whatever the
size of the store. Writes go in batches through ``add_messages``, which every
backend makes atomic: an interruption leaves each destination conversation
holding a whole number of batches, which is what ``--resume`` continues from.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from llama_index.storage.chat_store.cli._progress import Progress
from llama_index.storage.chat_store.cli.dump import (
    DumpTotals,
    dump_end,
    dump_header,
    dump_line,
    read_dump,
)
from llama_index.storage.chat_store.core import (
    BaseChatStore,
    ChatMessage,
    ChatStoreError,
    message_to_json,
)

__all__ = ["ConflictError", "Existing", "Summary", "copy_store", "export_store", "import_dump"]


class ConflictError(ChatStoreError):
    """A destination conversation already holds messages the command must not overwrite."""


class Existing(enum.Enum):
    """What to do with a destination conversation that already holds messages."""

    ERROR = "error"
    RESUME = "resume"
    REPLACE = "replace"


@dataclass
class Summary:
    """What a transfer did."""

    keys: int = 0
    messages: int = 0
    skipped: int = 0
    mismatched: list[str] = field(default_factory=list)


def _keys(store: BaseChatStore, only: list[str] | None) -> Iterable[str]:
    return list(dict.fromkeys(only)) if only else store.iter_keys()


def _pages(store: BaseChatStore, key: str, start: int, size: int) -> Iterator[list[ChatMessage]]:
    offset = start
    while True:
        page = store.get_messages(key, offset=offset, limit=size)
        if not page:
            return
        yield page
        offset += len(page)
        if len(page) < size:
            return


def _stream(
    store: BaseChatStore, keys: list[str] | None, page: int
) -> Iterator[tuple[str, list[ChatMessage]]]:
    for key in _keys(store, keys):
        for messages in _pages(store, key, 0, page):
            yield key, messages


def export_store(
    store: BaseChatStore, out: IO[bytes], *, keys: list[str] | None, page: int, progress: Progress
) -> Summary:
    """Write every conversation of ``store`` (or only ``keys``) to ``out`` as a dump."""
    summary = Summary()
    stream = _stream(store, keys, page)
    # The first read happens before any output: an unreachable store leaves ``out`` empty.
    first = next(stream, None)
    out.write(dump_header().encode() + b"\n")
    previous = None
    for key, messages in itertools.chain([first] if first else [], stream):
        out.write("".join(dump_line(key, m) + "\n" for m in messages).encode("utf-8"))
        if key != previous:
            summary.keys += 1
            previous = key
        summary.messages += len(messages)
        progress.update(len(messages))
    out.write(dump_end(DumpTotals(keys=summary.keys, messages=summary.messages)).encode() + b"\n")
    out.flush()
    return summary


class _Prefix:
    """Compare a stream of messages, position by position, with what a conversation holds.

    The conversation is read a page at a time, so memory stays bounded by a page however
    long the prefix is.
    """

    def __init__(self, store: BaseChatStore, key: str, length: int, page: int) -> None:
        self.store, self.key, self.length, self.page = store, key, length, page
        self.position = 0
        self._buffer: list[str] = []

    @property
    def unmatched(self) -> bool:
        """Whether some held positions have not been matched yet."""
        return self.position < self.length

    def matches(self, message: ChatMessage) -> bool:
        """Return whether ``message`` equals the held message at the next position."""
        if not self._buffer:
            limit = min(self.page, self.length - self.position)
            held = self.store.get_messages(self.key, offset=self.position, limit=limit)
            self._buffer = [message_to_json(m) for m in reversed(held)]
        if not self._buffer:  # the conversation shrank under us: nothing left to match
            return False
        if self._buffer.pop() != message_to_json(message):
            return False
        self.position += 1
        return True


def _first_difference(
    src: BaseChatStore, dst: BaseChatStore, key: str, have: int, page: int
) -> int | None:
    """Return the first of the ``have`` positions where ``dst`` and ``src`` differ, or None."""
    held = _Prefix(dst, key, have, page)
    for messages in _pages(src, key, 0, page):
        for message in messages[: have - held.position]:
            if not held.matches(message):
                return held.position
        if held.position == have:
            return None
    return held.position  # the source ended before the destination's prefix did


def _already_there(
    key: str, have: int, want: int, differs_at: int | None, existing: Existing, what: str
) -> int:
    """Return where to continue a destination conversation holding ``have`` messages.

    Raises:
        ConflictError: The destination holds something else, or a partial copy without --resume.
    """
    if differs_at is not None:
        raise ConflictError(
            f"destination key {key!r} already holds {have} messages that are not a prefix of "
            f"the {what}: they differ at position {differs_at}; rerun with --replace to "
            "overwrite it"
        )
    if have == want or existing is Existing.RESUME:
        return have  # complete already: running the same command twice changes nothing
    raise ConflictError(
        f"destination key {key!r} already holds {have} of the {want} messages of the {what} "
        "(an interrupted run?); rerun with --resume to continue it, or --replace to "
        "overwrite it"
    )


def copy_store(
    src: BaseChatStore,
    dst: BaseChatStore,
    *,
    keys: list[str] | None,
    existing: Existing,
    batch: int,
    progress: Progress,
) -> Summary:
    """Copy conversations from ``src`` to ``dst`` and verify the counts of each.

    A destination conversation that already equals the source is skipped, so
    copying twice is harmless; with ``existing=RESUME`` a destination holding a
    prefix of the source (an interrupted copy) is continued; ``REPLACE``
    overwrites. Before skipping or continuing, every message the destination
    already holds is compared with the source's at the same position, reading
    both a page at a time. Each conversation's count is compared after it is copied;
    mismatches (a source written to during the copy) are listed in the summary.

    Raises:
        ConflictError: A destination conversation holds other messages (without REPLACE).
    """
    summary = Summary()
    for key in _keys(src, keys):
        want, have = src.count_messages(key), dst.count_messages(key)
        if not want:
            continue
        start = 0
        if have and existing is Existing.REPLACE:
            dst.set_messages(key, [])
        elif have:
            # Every position the destination holds is compared, not only the last: a
            # different conversation that happens to end the same way must not be continued.
            differs = _first_difference(src, dst, key, have, batch)
            start = _already_there(key, have, want, differs, existing, "source conversation")
            progress.update(start)
        copied = 0
        for messages in _pages(src, key, start, batch):
            dst.add_messages(key, messages)
            copied += len(messages)
            progress.update(len(messages))
        summary.keys += 1
        summary.messages += copied
        summary.skipped += start == want
        if dst.count_messages(key) != src.count_messages(key):
            summary.mismatched.append(key)
    return summary


@dataclass
class _Target:
    """A destination conversation while its dump lines stream in."""

    key: str
    held: _Prefix | None = None  # with --resume: what the destination held, still to match
    expected: int = 0
    pending: list[ChatMessage] = field(default_factory=list)


class _Importer:
    def __init__(
        self, dst: BaseChatStore, existing: Existing, batch: int, progress: Progress
    ) -> None:
        self.dst, self.existing, self.batch, self.progress = dst, existing, batch, progress
        self.expected: dict[str, int] = {}
        self.summary = Summary()

    def open(self, key: str) -> _Target:
        if key in self.expected:  # the key came back later in the dump: keep appending
            return _Target(key, expected=self.expected[key])
        have = self.dst.count_messages(key)
        target = _Target(key, expected=have)
        if have and self.existing is Existing.REPLACE:
            self.dst.set_messages(key, [])
            target.expected = 0
        elif have and self.existing is Existing.RESUME:
            target.held = _Prefix(self.dst, key, have, self.batch)
        elif have:
            raise ConflictError(
                f"destination key {key!r} already holds {have} messages; rerun with --resume "
                "to continue an interrupted import, or --replace to overwrite it"
            )
        self.summary.keys += 1
        return target

    def add(self, target: _Target, message: ChatMessage) -> None:
        self.progress.update(1)
        held = target.held
        if held is not None and held.unmatched:
            if not held.matches(message):
                raise ConflictError(
                    f"destination key {target.key!r} already holds {held.length} messages that "
                    f"are not a prefix of the dump: they differ at position {held.position}; "
                    "rerun with --replace to overwrite it"
                )
            return
        target.pending.append(message)
        if len(target.pending) >= self.batch:
            self.flush(target)

    def flush(self, target: _Target) -> None:
        if target.pending:
            self.dst.add_messages(target.key, target.pending)
            target.expected += len(target.pending)
            self.summary.messages += len(target.pending)
            target.pending = []

    def close(self, target: _Target) -> None:
        if target.held is not None and target.held.unmatched:
            raise ConflictError(
                f"destination key {target.key!r} holds {target.held.length} messages, more "
                f"than the dump's {target.held.position} for it; "
                "rerun with --replace to overwrite it"
            )
        self.flush(target)
        self.expected[target.key] = target.expected


def import_dump(
    dst: BaseChatStore,
    lines: Iterable[bytes],
    *,
    source: str,
    existing: Existing,
    batch: int,
    progress: Progress,
) -> Summary:
    """Write a dump's messages into ``dst``, streaming, and verify each key's count at the end.

    Raises:
        CorruptDataError: A dump line is malformed (names its number) or the dump is truncated.
        ConflictError: A destination conversation already holds messages (without RESUME/REPLACE).
    """
    importer = _Importer(dst, existing, batch, progress)
    target: _Target | None = None
    for key, message in read_dump(lines, source=source):
        if target is None or target.key != key:
            if target is not None:
                importer.close(target)
            target = importer.open(key)
        importer.add(target, message)
    if target is not None:
        importer.close(target)
    summary = importer.summary
    summary.mismatched = [k for k, n in importer.expected.items() if dst.count_messages(k) != n]
    return summary
