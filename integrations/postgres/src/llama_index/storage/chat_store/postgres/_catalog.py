# ruff: noqa: S608 (identifiers are quoted by the dialect, values are bind parameters)
"""The native layout's conversation catalog: its statements, and what their rows mean.

The catalog is the conversations table itself: each row keeps the count, ``created_at``,
``updated_at`` and ``metadata`` (a JSON object, NULL when empty) that every writer of the
row stamps (see ``_layouts``). Rows written before those columns existed read as times
``None`` and no metadata until a writer stamps them (``created_at`` stays ``None``: when
such a conversation began is not known).

A page is one statement reading a range of the ``key COLLATE "C"`` index (byte order,
which for UTF-8 is code point order): keys from ``prefix`` up to the first key past every
key starting with it, after ``after``, one row more than the page to tell whether another
follows. So it costs the page, not the table, and a key present for the whole walk is
listed exactly once however the others change.

``set_metadata`` is one transaction: it locks the conversation's row (the lock every writer
takes first), merges and checks the size with core's ``merged_metadata`` (raising before
anything is written), then writes the metadata and ``updated_at``. A retry applies the
same merge again, which changes nothing more, so it needs no operation record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import TextClause, text

from llama_index.storage.chat_store.core.catalog import (
    ConversationInfo,
    ConversationPage,
    encode_value,
)
from llama_index.storage.chat_store.postgres._drivers import Row
from llama_index.storage.chat_store.postgres._schema import (
    EXPIRES,
    conversations_table,
    qualified,
)

__all__ = [
    "CatalogStatements",
    "catalog_statements",
    "entry_of",
    "metadata_text",
    "page_of",
    "page_params",
    "stored_metadata",
]

_ENTRY = "key, message_count, created_at, updated_at, metadata::text"
_LIVE = "message_count > 0 AND (expires_at IS NULL OR expires_at > now())"
_BYTES = 'key COLLATE "C"'
# The most rows one page asks for that still fit a bigint parameter.
_MOST = 2**62


@dataclass(frozen=True)
class CatalogStatements:
    """The catalog's statements over one native table; each yields entry rows but ``hold``."""

    page: TextClause  # prefix, after, limit
    prefix_page: TextClause  # prefix, past (first key after every key with prefix), after, limit
    entry: TextClause  # key
    hold: TextClause  # key -> (live count, metadata text), the row locked
    set_metadata: TextClause  # key, metadata (JSON text or None), ttl


def catalog_statements(schema: str, table: str) -> CatalogStatements:
    """Build the catalog statements of the native layout over ``schema.table``."""
    c = qualified(schema, conversations_table(table))
    window = (
        f"SELECT {_ENTRY} FROM {c} WHERE {_LIVE} AND {_BYTES} >= CAST(:prefix AS text) "
        f"AND {_BYTES} > CAST(:after AS text)"
    )
    order = f" ORDER BY {_BYTES} LIMIT CAST(:limit AS bigint)"
    return CatalogStatements(
        page=text(window + order),
        prefix_page=text(f"{window} AND {_BYTES} < CAST(:past AS text){order}"),
        entry=text(f"SELECT {_ENTRY} FROM {c} WHERE key = CAST(:key AS text) AND {_LIVE}"),
        hold=text(
            f"SELECT CASE WHEN expires_at <= now() THEN 0 ELSE message_count END, "
            f"metadata::text FROM {c} WHERE key = CAST(:key AS text) FOR UPDATE"
        ),
        set_metadata=text(
            f"UPDATE {c} SET metadata = CAST(:metadata AS json), "
            f"updated_at = clock_timestamp(), expires_at = {EXPIRES} "
            f"WHERE key = CAST(:key AS text) RETURNING {_ENTRY}"
        ),
    )


def _past(prefix: str) -> str | None:
    """The first string after every string starting with ``prefix`` (``None``: there is none).

    Code point order: ``prefix`` with its last character that is not U+10FFFF moved one up
    (past the surrogates, which UTF-8 text never holds) and the characters after it dropped.
    """
    for end in range(len(prefix) - 1, -1, -1):
        point = ord(prefix[end])
        if point < 0x10FFFF:
            point = 0xE000 if 0xD800 <= point + 1 <= 0xDFFF else point + 1
            return prefix[:end] + chr(point)
    return None


def page_params(
    statements: CatalogStatements, prefix: str, after: str | None, limit: int
) -> tuple[TextClause, dict[str, Any]]:
    """The statement and parameters reading one page (one row more than ``limit``)."""
    params = {"prefix": prefix, "after": after or "", "limit": min(limit, _MOST) + 1}
    past = _past(prefix)
    if past is None:
        return statements.page, params
    return statements.prefix_page, {**params, "past": past}


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(timezone.utc)


def entry_of(row: Row) -> ConversationInfo:
    """A catalog entry from a row ``(key, count, created_at, updated_at, metadata text)``."""
    key, count, created, updated, metadata = row
    found = json.loads(metadata) if metadata is not None else {}
    return ConversationInfo(key, int(count), _utc(created), _utc(updated), found)


def page_of(rows: list[Row], limit: int) -> ConversationPage:
    """A page from up to ``limit + 1`` entry rows (the extra one says another page follows)."""
    entries = [entry_of(row) for row in rows[:limit]]
    more = len(rows) > limit
    return ConversationPage(entries, entries[-1].key if more else None)


def stored_metadata(stored: str | None) -> dict[str, str]:
    """The stored metadata as ``{name: compact JSON text}`` (what core's merge takes)."""
    if stored is None:
        return {}
    return {name: encode_value(value, name) for name, value in json.loads(stored).items()}


def metadata_text(encoded: dict[str, str]) -> str | None:
    """``{name: JSON text}`` as the stored JSON object (``None`` when empty)."""
    if not encoded:
        return None
    return "{" + ",".join(f"{encode_value(name)}:{value}" for name, value in encoded.items()) + "}"
