"""Async calls cancelled mid-flight (asyncio timeouts, task groups) leave nothing behind."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import Callable

import psycopg
import pytest

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.postgres import PostgresChatStore

STEPS = 60  # event-loop turns swept: connecting (TLS probe, startup, auth) takes fewer


def _leftovers(caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder) -> list[str]:
    gc.collect()
    logged = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    unclosed = [str(w.message) for w in recwarn if issubclass(w.category, ResourceWarning)]
    return logged + [m for m in unclosed if "connection" in m or "transport" in m]


def test_cancelled_while_connecting_leaves_nothing_unretrieved(
    database_url_for_module: str,
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
) -> None:
    """Cancel a first call after 0, 1, 2, ... loop turns: no unretrieved future, no open socket.

    The URL has no sslmode, so asyncpg first asks the server for TLS (sslmode=prefer):
    the step where a cancelled connect used to leave a failed future nobody retrieved.

    If this fails: the connect is cancelled half-way ("Future exception was never
    retrieved") or a connection made for a cancelled caller is never closed.
    """
    caplog.set_level(logging.WARNING, logger="asyncio")
    schema = f"c_{uuid.uuid4().hex[:8]}"
    with PostgresChatStore.from_uri(database_url_for_module, schema_name=schema) as setup:
        setup.init_table()

    async def sweep() -> None:
        for turns in range(STEPS):
            store = PostgresChatStore.from_uri(database_url_for_module, schema_name=schema)
            call = asyncio.ensure_future(store.acount_messages("k"))
            for _ in range(turns):
                await asyncio.sleep(0)
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            assert await store.acount_messages("k") == 0  # the store still works
            await store.aclose()

    asyncio.run(sweep())
    assert _leftovers(caplog, recwarn) == []


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.aget_messages("k"),
        lambda s: s.adelete_last_message("k"),
        lambda s: s.aadd_message("k", ChatMessage(content="new"), idx=0),
    ],
    ids=["read", "pop", "insert"],
)
def test_cancelled_while_the_server_is_busy_leaves_nothing_behind(
    database_url_for_module: str,
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
    operation: Callable[[PostgresChatStore], object],
) -> None:
    """A call blocked on a lock, cancelled: nothing changed, the store goes on working.

    If this fails: the cancelled call's connection is dropped without being closed (an
    "unclosed connection" ResourceWarning when collected) or returned in a state the next
    call trips over.
    """
    caplog.set_level(logging.WARNING, logger="asyncio")
    schema = f"b_{uuid.uuid4().hex[:8]}"
    store = PostgresChatStore.from_uri(
        f"{database_url_for_module}?application_name=cancelled", schema_name=schema
    )
    store.set_messages("k", [ChatMessage(content="a"), ChatMessage(content="b")])
    tables = f'"{schema}".chatstore, "{schema}".chatstore_conversations'

    async def cancel_while_blocked() -> list[str | None]:
        await store.acount_messages("k")  # connected, tables known
        with psycopg.connect(database_url_for_module) as blocker:
            blocker.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
            call = asyncio.ensure_future(operation(store))  # type: ignore[arg-type]
            with psycopg.connect(database_url_for_module, autocommit=True) as watcher:
                while not call.done():
                    row = watcher.execute(
                        "SELECT 1 FROM pg_stat_activity "
                        "WHERE application_name = 'cancelled' AND wait_event_type = 'Lock'"
                    ).fetchone()
                    if row is not None:
                        break
                    await asyncio.sleep(0.01)
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            assert call.cancelled()
            blocker.rollback()
        after = [m.content for m in await store.aget_messages("k")]
        await store.aclose()
        return after

    assert asyncio.run(cancel_while_blocked()) == ["a", "b"]
    assert _leftovers(caplog, recwarn) == []
    store.close()
