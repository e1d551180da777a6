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


def _same(a: list[ChatMessage], b: list[ChatMessage]) -> bool:
    return [message_to_json(m) for m in a] == [message_to_json(m) for m in b]


def _already_there(
    key: str, have: int, want: int, tail_matches: bool, existing: Existing, what: str
) -> int:
    """Return where to continue a destination conversation holding ``have`` messages.

    Raises:
        ConflictError: The destination holds something else, or a partial copy without --resume.
    """
    if have == want and tail_matches:
        return have  # complete already: running the same command twice changes nothing
    if existing is Existing.RESUME and have < want and tail_matches:
        return have
    if tail_matches:
        raise ConflictError(
            f"destination key {key!r} already holds {have} of the {want} messages of the {what} "
            "(an interrupted run?); rerun with --resume to continue it, or --replace to "
            "overwrite it"
        )
    raise ConflictError(
        f"destination key {key!r} already holds {have} messages that differ from the {what}; "
        "rerun with --replace to overwrite it"
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
    overwrites. Each conversation's count is compared after it is copied;
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
            tail = have <= want and _same(
                dst.get_messages(key, offset=have - 1, limit=1),
                src.get_messages(key, offset=have - 1, limit=1),
            )
            start = _already_there(key, have, want, tail, existing, "source conversation")
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
    skip: int = 0
    skipped_last: ChatMessage | None = None
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
            target.skip = have
        elif have:
            raise ConflictError(
                f"destination key {key!r} already holds {have} messages; rerun with --resume "
                "to continue an interrupted import, or --replace to overwrite it"
            )
        self.summary.keys += 1
        return target

    def add(self, target: _Target, message: ChatMessage) -> None:
        self.progress.update(1)
        if target.skip:
            target.skip -= 1
            target.skipped_last = message
            if not target.skip:
                self._check_resume_point(target)
            return
        target.pending.append(message)
        if len(target.pending) >= self.batch:
            self.flush(target)

    def _check_resume_point(self, target: _Target) -> None:
        assert target.skipped_last is not None
        last = self.dst.get_messages(target.key, offset=target.expected - 1, limit=1)
        if not _same(last, [target.skipped_last]):
            raise ConflictError(
                f"destination key {target.key!r} holds {target.expected} messages that are not "
                "a prefix of the dump's; rerun with --replace to overwrite it"
            )

    def flush(self, target: _Target) -> None:
        if target.pending:
            self.dst.add_messages(target.key, target.pending)
            target.expected += len(target.pending)
            self.summary.messages += len(target.pending)
            target.pending = []

    def close(self, target: _Target) -> None:
        if target.skip:
            raise ConflictError(
                f"destination key {target.key!r} holds more messages than the dump has for it; "
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
