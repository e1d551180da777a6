"""refresh_on_read on the native layout: which reads slide a conversation's expiry.

The conformance suite checks the sync reads against the clock; these check the stored
expiry itself after the async reads, so no test waits for anything to expire.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.postgres import PostgresChatStore

TTL = 3600


@pytest.fixture
def schema() -> str:
    return f"r_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw(database_url_for_module: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url_for_module, autocommit=True) as connection:
        yield connection


def _store(url: str, schema: str, *, refresh: bool) -> PostgresChatStore:
    return PostgresChatStore.from_uri(url, schema_name=schema, ttl=TTL, refresh_on_read=refresh)


def _set_expiry(raw: psycopg.Connection, schema: str, seconds: float) -> datetime.datetime:
    row = raw.execute(
        f'UPDATE "{schema}".chatstore_conversations '
        "SET expires_at = now() + %s * interval '1 second' WHERE key = 'k' RETURNING expires_at",
        (seconds,),
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _expiry(raw: psycopg.Connection, schema: str) -> datetime.datetime:
    row = raw.execute(
        f"SELECT expires_at FROM \"{schema}\".chatstore_conversations WHERE key = 'k'"
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _far(raw: psycopg.Connection) -> datetime.datetime:
    """A moment the expiry passes only if a read set it to now + TTL."""
    row = raw.execute("SELECT now() + interval '1000 seconds'").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("read", ["head", "tail", "count"])
def test_async_reads_slide_a_live_conversation(
    database_url_for_module: str, raw: psycopg.Connection, schema: str, read: str
) -> None:
    """aget_messages (both windows) and acount_messages set a live expiry to now + ttl.

    If this fails: the async path does not use the refreshing statements or their ttl.
    """
    store = _store(database_url_for_module, schema, refresh=True)
    store.add_messages("k", [ChatMessage(content="a"), ChatMessage(content="b")])
    _set_expiry(raw, schema, 10)

    async def run() -> object:
        if read == "count":
            return await store.acount_messages("k")
        offset = -1 if read == "tail" else 1
        return [m.content for m in await store.aget_messages("k", offset=offset)]

    assert asyncio.run(run()) in (2, ["b"])
    assert _expiry(raw, schema) > _far(raw)
    store.close()


def test_reads_without_the_option_leave_the_expiry(
    database_url_for_module: str, raw: psycopg.Connection, schema: str
) -> None:
    """Without refresh_on_read no read, sync or async, writes the expiry.

    If this fails: the plain read statements carry the refreshing CTE.
    """
    store = _store(database_url_for_module, schema, refresh=False)
    store.add_messages("k", [ChatMessage(content="a")])
    before = _set_expiry(raw, schema, 10)
    assert store.count_messages("k") == 1
    assert len(store.get_messages("k", offset=-1)) == 1
    assert asyncio.run(store.acount_messages("k")) == 1
    assert len(asyncio.run(store.aget_messages("k"))) == 1
    assert _expiry(raw, schema) == before
    store.close()


def test_reads_never_revive_an_expired_conversation(
    database_url_for_module: str, raw: psycopg.Connection, schema: str
) -> None:
    """A refreshing read of an expired conversation finds nothing and leaves it expired.

    If this fails: the refreshing UPDATE does not check that the conversation is live.
    """
    store = _store(database_url_for_module, schema, refresh=True)
    store.add_messages("k", [ChatMessage(content="a")])
    before = _set_expiry(raw, schema, -1)
    assert store.get_messages("k") == []
    assert store.count_messages("k") == 0
    assert asyncio.run(store.aget_messages("k", offset=-1)) == []
    assert asyncio.run(store.acount_messages("k")) == 0
    assert _expiry(raw, schema) == before
    assert store.get_keys() == []
    store.close()
