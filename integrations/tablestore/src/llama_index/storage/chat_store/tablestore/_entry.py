"""A conversation's catalog entry, kept on its meta row (see :mod:`._native`).

Three columns beside ``gen``, ``head``, ``tail``, ``ver``: ``created_at`` and ``updated_at``
(epoch milliseconds, from the clock of the client that committed) and ``metadata`` (a JSON
object as text; absent when empty): core's :class:`~llama_index.storage.chat_store.core.meta.Entry`.
The commit of every change stamps them in the same conditional write (:func:`stamp`), so
they never disagree with the messages. Meta rows written before these columns existed read
as ``None`` times and ``{}`` metadata; their next change stamps ``updated_at``
(``created_at`` stays unknown: the first message's time was never kept).
"""

from __future__ import annotations

from typing import Any

from llama_index.storage.chat_store.core.catalog import ConversationInfo
from llama_index.storage.chat_store.core.meta import Entry

__all__ = ["COLUMNS", "CREATED", "METADATA", "UPDATED", "info", "read", "stamp"]

CREATED, UPDATED, METADATA = "created_at", "updated_at", "metadata"
COLUMNS = [CREATED, UPDATED, METADATA]


def stamp(began: bool, emptied: bool) -> tuple[dict[str, Any], list[str]]:
    """The entry columns a change's commit puts, and those it removes.

    ``began``: the conversation held no messages before it; ``emptied``: none after it. (The
    row's entry is not read by a commit: only the columns a change sets are put.)
    """
    new = Entry().changed(0 if began else 1, 0 if emptied else 1)
    if emptied:
        return {}, list(COLUMNS)
    if began:
        return {CREATED: new.created, UPDATED: new.updated}, [METADATA]
    return {UPDATED: new.updated}, []


def read(where: str, key: str, values: dict[str, Any]) -> Entry:
    """The entry a meta row's ``values`` hold (``where``: the meta table, for errors).

    Raises:
        CorruptDataError: A time or the metadata is not what this layout writes.
    """
    get = values.get
    return Entry.read(where, key, get(CREATED), get(UPDATED), get(METADATA))


def info(table: str, key: str, size: int, values: dict[str, Any]) -> ConversationInfo:
    """The catalog entry of a conversation of ``size`` messages whose meta row holds ``values``.

    Raises:
        CorruptDataError: A time or the metadata is not what this layout writes.
    """
    where = f"table {table!r}"
    return read(where, key, values).info(where, key, size)
