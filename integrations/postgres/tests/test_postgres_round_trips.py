"""How a change reaches the server: one round trip when no other writer is at work.

Each change also records its operation id (exactly-once retries) inside that same statement,
so the record costs no round trip: an append stays one statement in every layout.

A removal must read the conversation only once it holds the conversation's lock. As a
transaction (BEGIN, lock, change, COMMIT) that costs four round trips; the native layout
does it in one checked statement, Google's layout in one pipelined pair of runs. These
tests count the calls the store makes on its connections (``fetch``: one statement, one
round trip; ``fetch_many``: one round trip by construction; ``transaction``: at least
three) and check that ``fetch_many`` really is one transaction.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.postgres import PostgresChatStore

REMOVALS: dict[str, Callable[[PostgresChatStore, str, str], Any]] = {
    "pop": lambda s, k, api: _call(s, api, "delete_last_message", k),
    "delete_first": lambda s, k, api: _call(s, api, "delete_message", k, 0),
    "delete_from_end": lambda s, k, api: _call(s, api, "delete_message", k, -2),
    "delete_oldest": lambda s, k, api: _call(s, api, "delete_oldest_messages", k, 2),
    "delete_all": lambda s, k, api: _call(s, api, "delete_messages", k),
    "set_empty": lambda s, k, api: _call(s, api, "set_messages", k, []),
}

# What one uncontended removal calls, per layout.
EXPECTED = {
    "native": {"fetch": 1},
    "google": {"fetch_many": 1},
    "llama_index": {"fetch": 1},
}


def _call(store: PostgresChatStore, api: str, name: str, *args: Any) -> Any:
    if api == "async":
        return asyncio.run(getattr(store, f"a{name}")(*args))
    return getattr(store, name)(*args)


class _Calls:
    """Counts the store's calls on its sync and async connections (and lets them run)."""

    def __init__(self, store: PostgresChatStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        for connections in (store._connections(), store._aconnections()):
            for name in ("fetch", "fetch_many", "transaction"):
                monkeypatch.setattr(connections, name, self._counting(name, connections))

    def _counting(self, name: str, connections: Any) -> Any:
        real = getattr(connections, name)

        def counted(*args: Any) -> Any:
            self.counts[name] += 1
            return real(*args)

        return counted


@pytest.fixture(params=list(EXPECTED))
def store(request: pytest.FixtureRequest, database_url_for_module: str) -> Iterator[Any]:
    made = PostgresChatStore.from_uri(
        database_url_for_module, schema_name=f"rt_{uuid.uuid4().hex[:12]}", layout=request.param
    )
    made.init_table()
    yield made
    made.close()


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("removal", list(REMOVALS))
def test_an_uncontended_removal_is_one_round_trip(
    store: PostgresChatStore, monkeypatch: pytest.MonkeyPatch, removal: str, api: str
) -> None:
    """A removal no other writer contends with is one statement, or one pipelined pair.

    If this fails: a removal went back to a lock-first transaction (four round trips), or
    a native removal reported a stale snapshot with nobody else writing (its ``lk`` CTE
    compares the wrong row versions).
    """
    key = f"k-{uuid.uuid4().hex[:8]}"
    store.set_messages(key, [ChatMessage(content=f"m{i}") for i in range(5)])
    calls = _Calls(store, monkeypatch)
    REMOVALS[removal](store, key, api)
    assert dict(calls.counts) == EXPECTED[store.layout]


_TAKE_THEN_COUNT = text(
    "SELECT CASE WHEN CAST(:take AS boolean) THEN "
    "CAST(pg_advisory_xact_lock(CAST(:lock AS bigint)) AS text) END, "
    "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND pid = pg_backend_pid())"
)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_an_append_to_a_conversation_is_one_statement(
    store: PostgresChatStore, monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    """add_message and add_messages, their operation ids recorded, are one statement each.

    If this fails: recording the operation id went into a statement or transaction of its
    own (a round trip more on every change), or the native append no longer takes the
    plain update of a live conversation.
    """
    key = f"k-{uuid.uuid4().hex[:8]}"
    store.set_messages(key, [ChatMessage(content="m0")])
    calls = _Calls(store, monkeypatch)
    _call(store, api, "add_message", key, ChatMessage(content="m1"))
    _call(store, api, "add_messages", key, [ChatMessage(content="m2"), ChatMessage(content="m3")])
    assert dict(calls.counts) == {"fetch": 2}
    assert [m.content for m in store.get_messages(key)] == ["m0", "m1", "m2", "m3"]


@pytest.mark.parametrize("api", ["sync", "async"])
def test_fetch_many_runs_every_set_in_one_transaction(
    database_url_for_module: str, api: str
) -> None:
    """The second run still holds the advisory lock the first took; none is left after.

    If this fails: the runs of ``fetch_many`` are separate transactions (a Sync between
    them, or autocommit per statement), so a pipelined removal's change would run without
    the lock its first run took.
    """
    store = PostgresChatStore.from_uri(database_url_for_module)
    runs = [{"take": True, "lock": 7_340_013}, {"take": False, "lock": 7_340_013}]
    if api == "sync":
        rows = store._connections().fetch_many(_TAKE_THEN_COUNT, runs)
        after = store._connections().fetch(_TAKE_THEN_COUNT, runs[1])
    else:

        async def both() -> tuple[Any, Any]:
            connections = store._aconnections()
            return (
                await connections.fetch_many(_TAKE_THEN_COUNT, runs),
                await connections.fetch(_TAKE_THEN_COUNT, runs[1]),
            )

        rows, after = asyncio.run(both())
    assert [int(row[1]) for row in rows] == [1, 1]
    assert int(after[0][1]) == 0
    store.close()
