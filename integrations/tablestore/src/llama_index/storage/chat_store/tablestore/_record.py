"""A conversation's record of its latest changes, so that a resent change applies once.

Every change writes its operation id into the conversation's commit row (the meta row, or
LlamaIndex's one row per conversation) in the same conditional write that commits it, in
one of :data:`SLOTS` columns ``o0`` ... chosen by the row's version (a ring: the record
keeps the last :data:`SLOTS` changes of the conversation). A removal writes what it
removed with it (the message texts as stored, up to :data:`REPLY_BYTES`). A resent change
that finds its id there applies nothing and returns the recorded reply.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.storage.chat_store.core import (
    ChatMessage,
    ChatStoreError,
    CorruptDataError,
    message_from_json,
)
from llama_index.storage.chat_store.core.backend import Change, Plan, removal_error
from llama_index.storage.chat_store.core.meta import Race
from llama_index.storage.chat_store.tablestore._sdk import get_row

__all__ = [
    "COLUMNS", "RACE", "REPLY_BYTES", "SLOTS", "STORAGE", "Outcome", "Replay", "column",
    "decode", "entry", "replayed", "until_done",
]  # fmt: skip

SLOTS = 32
"""How many of a conversation's latest changes its record keeps."""
REPLY_BYTES = 64 * 1024
"""The largest reply (the removed messages' text) a record keeps; larger ones are not kept."""
COLUMNS = [f"o{slot}" for slot in range(SLOTS)]
_TOO_LARGE = "!"
STORAGE = "Tablestore"


def column(version: int) -> str:
    """The record column a commit of ``version`` writes."""
    return COLUMNS[version % SLOTS]


def entry(op_id: str, removed: Sequence[Any] | None = None) -> str:
    """The record of one change: its op id, and for a removal the texts it removed.

    A removed cell that is not text is kept as ``null`` (a resent removal then raises
    :class:`CorruptDataError` as the first one did).
    """
    if removed is None:
        return op_id
    reply = json.dumps([v if isinstance(v, str) else None for v in removed], ensure_ascii=False)
    if len(reply.encode("utf-8")) > REPLY_BYTES:
        reply = _TOO_LARGE
    return f"{op_id}\n{reply}"


@dataclass(frozen=True)
class Replay:
    """A change found in the record: it was applied; ``reply`` is what it recorded."""

    reply: str | None

    def messages(self, key: str) -> list[ChatMessage]:
        """The messages the first application removed, in order.

        Raises:
            ChatStoreError: They were too large to be kept (the removal was applied once).
            CorruptDataError: One of them was not a message (removed all the same).
        """
        if self.reply is None:
            return []
        if self.reply == _TOO_LARGE:
            raise ChatStoreError(
                f"conversation {key!r}: the removal was applied, but its reply was lost and "
                f"what it removed (over {REPLY_BYTES} bytes) was not kept to be returned again"
            )
        not_text = CorruptDataError(
            f"conversation {key!r}: a message removed was not text", key=key
        )
        texts = enumerate(json.loads(self.reply))
        messages, error = decode(
            key, [(p, t if isinstance(t, str) else not_text) for p, t in texts]
        )
        if error is not None:
            raise removal_error(error, STORAGE) from error
        return messages


def decode(
    key: str, found: Iterable[tuple[int, Any]]
) -> tuple[list[ChatMessage], CorruptDataError | None]:
    """Parse what a removal removes: its messages, and the first that is none (not raised).

    ``found``: ``(position, the message text, or the CorruptDataError that it is not one)``.
    A :class:`SerializationError` (a message this mode cannot represent) propagates: a
    removal raises it before it commits, so that valid data stays intact.
    """
    messages: list[ChatMessage] = []
    error: CorruptDataError | None = None
    for position, text in found:
        try:
            if isinstance(text, CorruptDataError):
                raise text
            messages.append(message_from_json(text, key=key, position=position))
        except CorruptDataError as exc:
            error = error or exc
    return messages, error


def replayed(table: str, key: str, change: Change) -> Plan[Replay | None]:
    """When ``change`` may have been committed already, what its record says (else ``None``).

    Reads the record columns of the conversation's commit row in ``table``.
    """
    if not change.check:
        return None
    change.check = False
    _, row, _ = yield get_row(table, key, COLUMNS)
    for _, value, *_ in row.attribute_columns or () if row else ():
        found, newline, reply = value.partition("\n") if isinstance(value, str) else ("", "", "")
        if found == change.id:
            return Replay(reply if newline else None)
    return None


Outcome = tuple[list[ChatMessage], CorruptDataError | None]
"""What a removal's attempt removed, and the first message it removed but could not read
(raised once the removal is done)."""
RACE = Race(attempts=200)
"""How a change retries after losing the race to other writers: 200 attempts, core's pauses."""


def until_done(
    table: str, key: str, change: Change, attempt: Callable[[], Plan[Outcome | None]]
) -> Plan[list[ChatMessage]]:
    """Run ``attempt`` until it wins the race (:data:`RACE`); return what it removed.

    ``attempt`` returns what it removed (``None``: nothing), or raises
    :class:`ConflictError` when it lost. ``table`` holds the conversation's commit row, with
    its record: an earlier attempt of ``change`` found committed there returns what it
    recorded. A removed message that could not be read raises core's :func:`removal_error`
    once the removal is done.

    Raises:
        ChatStoreError: Every attempt lost the race to other writers.
    """

    def once() -> Plan[list[ChatMessage]]:
        replay = yield from replayed(table, key, change)
        if replay is not None:
            return replay.messages(key)
        messages, error = (yield from attempt()) or ([], None)
        if error is not None:
            raise removal_error(error, STORAGE) from error
        return messages

    return (yield from RACE.run(key, f"table {table!r}", once))
