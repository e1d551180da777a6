"""Find conversations holding unreadable entries and, on request, move those entries aside."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_index.storage.chat_store.cli._progress import Progress
from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage, CorruptDataError

__all__ = ["Corrupt", "find_corrupt", "repair_key"]


@dataclass(frozen=True)
class Corrupt:
    """An unreadable entry (``position`` None: the whole conversation is unreadable)."""

    key: str
    position: int | None
    error: CorruptDataError

    def describe(self) -> str:
        """One line naming the key, the position and what is wrong."""
        where = "" if self.position is None else f" position {self.position}"
        return f"key {json.dumps(self.key)}{where}: {self.error}"


def _scan(store: BaseChatStore, key: str, count: int, page: int) -> Iterator[ChatMessage | Corrupt]:
    """Yield each message of ``key`` in order, or a :class:`Corrupt` where it is unreadable."""
    for offset in range(0, count, page):
        try:
            yield from store.get_messages(key, offset=offset, limit=page)
            continue
        except CorruptDataError:
            pass
        # Some entry of this page is unreadable: read the page one entry at a time.
        for position in range(offset, min(offset + page, count)):
            try:
                yield from store.get_messages(key, offset=position, limit=1)
            except CorruptDataError as exc:
                yield Corrupt(key, position, exc)


def find_corrupt(
    store: BaseChatStore, keys: Iterable[str], *, page: int, progress: Progress
) -> Iterator[tuple[str, list[Corrupt]]]:
    """Yield ``(key, corrupt entries)`` for every key checked (an empty list when sound)."""
    for key in keys:
        try:
            count = store.count_messages(key)
        except CorruptDataError as exc:
            yield key, [Corrupt(key, None, exc)]
            continue
        found: list[Corrupt] = []
        for item in _scan(store, key, count, page):
            if isinstance(item, Corrupt):
                found.append(item)
            progress.update(1)
        yield key, found


def _aside_record(entry: Corrupt) -> dict[str, Any]:
    record: dict[str, Any] = {
        "key": entry.key,
        "position": entry.position,
        "error": str(entry.error),
    }
    raw = entry.error.data
    if isinstance(raw, bytes):
        try:
            record["data"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            record["data"] = None
            record["data_base64"] = base64.b64encode(raw).decode("ascii")
    else:
        record["data"] = raw
    return record


def repair_key(
    store: BaseChatStore, key: str, entries: list[Corrupt], aside: Path, page: int
) -> int:
    """Append the unreadable entries of ``key`` to ``aside`` (JSON lines), then drop them.

    The aside file is written and fsynced before the conversation is rewritten
    with its readable messages, so nothing is lost if the command dies between
    the two. Writers to ``key`` should be stopped meanwhile: a message appended
    between the read and the rewrite would be lost.

    Returns:
        The number of entries moved aside.

    Raises:
        CorruptDataError: The whole conversation is unreadable (nothing to keep).
    """
    if any(entry.position is None for entry in entries):
        raise CorruptDataError(
            f"key {json.dumps(key)} is unreadable as a whole; it cannot be repaired entry by entry"
        )
    count = store.count_messages(key)
    kept = [m for m in _scan(store, key, count, page) if isinstance(m, ChatMessage)]
    with aside.open("a", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(_aside_record(entry), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    store.set_messages(key, kept)
    return count - len(kept)
