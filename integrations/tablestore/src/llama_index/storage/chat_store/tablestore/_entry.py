"""A conversation's catalog entry, kept on its meta row (see :mod:`._native`).

Three columns beside ``gen``, ``head``, ``tail``, ``ver``: ``created_at`` and ``updated_at``
(epoch milliseconds, from the clock of the client that committed) and ``metadata`` (a JSON
object as text; absent when empty). The commit of every change stamps them in the same
conditional write (:func:`stamp`), so they never disagree with the messages: a conversation
that begins gets both times and loses any metadata, one that changes gets ``updated_at``, one
that is emptied loses all three. Meta rows written before these columns existed read as
``None`` times and ``{}`` metadata; their next change stamps ``updated_at`` (``created_at``
stays unknown: the first message's time was never kept).
"""

from __future__ import annotations

import json
import time
from typing import Any

from llama_index.storage.chat_store.core import CorruptDataError
from llama_index.storage.chat_store.core.backend import corrupt_data_remedy
from llama_index.storage.chat_store.core.catalog import (
    ConversationInfo,
    decode_metadata,
    encode_value,
    from_epoch_ms,
)

__all__ = ["COLUMNS", "CREATED", "METADATA", "UPDATED", "info", "metadata_text", "now_ms",
           "stamp", "stored_metadata"]  # fmt: skip

CREATED, UPDATED, METADATA = "created_at", "updated_at", "metadata"
COLUMNS = [CREATED, UPDATED, METADATA]


def now_ms() -> int:
    """This client's clock, in epoch milliseconds (Tablestore has no server clock to read)."""
    return time.time_ns() // 1_000_000


def stamp(began: bool, emptied: bool) -> tuple[dict[str, Any], list[str]]:
    """The entry columns a change's commit puts, and those it removes.

    ``began``: the conversation held no messages before it; ``emptied``: none after it.
    """
    if emptied:
        return {}, list(COLUMNS)
    now = now_ms()
    if began:
        return {CREATED: now, UPDATED: now}, [METADATA]
    return {UPDATED: now}, []


def metadata_text(encoded: dict[str, str]) -> str | None:
    """Metadata ``{name: JSON text}`` as the column's text (``None``: no metadata, no column)."""
    if not encoded:
        return None
    return "{" + ",".join(f"{encode_value(name)}:{text}" for name, text in encoded.items()) + "}"


def stored_metadata(table: str, key: str, values: dict[str, Any]) -> dict[str, str]:
    """The metadata of a meta row's ``values`` as ``{name: JSON text}``.

    Raises:
        CorruptDataError: The column is not a JSON object (naming the key and the table).
    """
    text = values.get(METADATA)
    if text is None:
        return {}
    try:
        decoded = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        raise CorruptDataError(
            f"the metadata of conversation {key!r} in table {table!r} is not a JSON object: "
            f"{text!r:.200} ({corrupt_data_remedy(key)})",
            key=key,
        )
    return {name: encode_value(value, name) for name, value in decoded.items()}


def _time(table: str, key: str, values: dict[str, Any], name: str) -> Any:
    value = values.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise CorruptDataError(
            f"the {name} of conversation {key!r} in table {table!r} is not epoch "
            f"milliseconds: {value!r:.200} ({corrupt_data_remedy(key)})",
            key=key,
        )
    return from_epoch_ms(value)


def info(table: str, key: str, size: int, values: dict[str, Any]) -> ConversationInfo:
    """The catalog entry of a conversation of ``size`` messages whose meta row holds ``values``.

    Raises:
        CorruptDataError: A time or the metadata is not what this layout writes.
    """
    return ConversationInfo(
        key=key,
        message_count=size,
        created_at=_time(table, key, values, CREATED),
        updated_at=_time(table, key, values, UPDATED),
        metadata=decode_metadata(stored_metadata(table, key, values)),
    )
