"""Checks every store of the Postgres family runs the same way (PostgreSQL and YugabyteDB)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.postgres import PostgresChatStore

__all__ = ["NOT_A_MESSAGE", "damage_second_message", "round_trip_sync_and_async"]

S = TypeVar("S", bound=PostgresChatStore)

NOT_A_MESSAGE = '{"role": "user", "blocks": 42}'
"""Valid JSON that no message validates: what a damaged row holds."""


def damage_second_message(
    store: S,
    key: str,
    execute: Callable[[str, tuple[Any, ...]], None],
    *,
    table: str,
    array: bool = False,
) -> S:
    """Store two messages under ``key``, then overwrite the second with :data:`NOT_A_MESSAGE`.

    ``execute(sql, params)`` runs a statement on a raw connection (psycopg, psycopg2...);
    ``table`` is in ``store.schema_name`` (both quoted here); ``array``: LlamaIndex's layout
    (one row per key holding a JSON array), else a row per message.
    """
    store.add_messages(key, [ChatMessage(content="fine"), ChatMessage(content="bad")])
    # Quoted for a raw driver's %s statements (_schema.quote also escapes ':' for text()).
    target = ".".join('"' + name.replace('"', '""') + '"' for name in (store.schema_name, table))
    # Identifiers quoted, values bound.
    if array:
        sql = f"UPDATE {target} SET value[2] = %s::json WHERE key = %s"  # noqa: S608
    else:
        sql = (
            f"UPDATE {target} SET message = %s::json "  # noqa: S608
            f"WHERE id = (SELECT max(id) FROM {target} WHERE key = %s)"
        )
    execute(sql, (NOT_A_MESSAGE, key))
    return store


def round_trip_sync_and_async(store: BaseChatStore) -> None:
    """Write through the sync API, then the async one, read both back both ways, close both."""
    store.add_message("user1", ChatMessage(role="user", content="sync"))

    async def more() -> list[str | None]:
        await store.aadd_message("user1", ChatMessage(role="assistant", content="async"))
        contents = [m.content for m in await store.aget_messages("user1")]
        await store.aclose()
        return contents

    assert asyncio.run(more()) == ["sync", "async"]
    assert [m.content for m in store.get_messages("user1")] == ["sync", "async"]
    store.close()
