"""What ``delete_messages`` returns of a conversation it cannot wholly read.

Removing a conversation works however damaged its data is: a reset (LlamaIndex's memory
calls ``delete_messages``) must never be blocked by the data it resets, and raising after
the removal would leave the caller unsure whether it happened. The result can only hold
what parses as messages, so unreadable ones are left out of it and reported: one WARNING
per removed conversation on this package's logger, naming the key, the table and the
positions (never the content).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from llama_index.storage.chat_store.core import (
    ChatMessage,
    CorruptDataError,
    SerializationError,
    message_from_json,
)

__all__ = ["LOGGER", "nothing_readable", "readable_messages"]

LOGGER = logging.getLogger("llama_index.storage.chat_store.tablestore")


def readable_messages(table: str, key: str, texts: Sequence[object]) -> list[ChatMessage] | None:
    """Parse a removed conversation's stored texts, leaving out (and reporting) unreadable ones.

    Args:
        table: The table the conversation was removed from (for the report).
        key: The conversation's key.
        texts: Each position's stored text (anything else, e.g. ``None`` for a missing
            row, is unreadable).

    Returns:
        The readable messages in order; ``None`` when there were no messages at all.
    """
    found: list[ChatMessage] = []
    unreadable: list[int] = []
    for position, text in enumerate(texts):
        try:
            if not isinstance(text, str):
                raise CorruptDataError("not text", key=key, position=position)
            found.append(message_from_json(text, key=key, position=position))
        except (CorruptDataError, SerializationError):
            unreadable.append(position)
    if not unreadable:
        return found or None
    LOGGER.warning(
        "removed conversation %r from table %r; its messages at positions %s could not be "
        "read and are left out of the messages returned",
        key, table, unreadable,
    )  # fmt: skip
    return found


def nothing_readable(table: str, key: str, problem: str) -> list[ChatMessage]:
    """Report a removed conversation none of whose messages could be read; return ``[]``."""
    LOGGER.warning(
        "removed conversation %r from table %r; none of its messages could be read (%s)",
        key, table, problem,
    )  # fmt: skip
    return []
