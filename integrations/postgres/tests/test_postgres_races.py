"""Two store instances doing different things to one conversation at once, made deterministic.

A trigger on the messages table (the gate) holds the first operation, A, inside the server
while it writes or removes a message carrying ``MARK``, with every lock A has taken so far.
The second operation, B, then starts from another store instance (its own connections)
and runs until it finishes or waits for a lock. The gate opens and both finish. What each
returned and the conversation left behind must be explained by A then B, or by B then A,
applied to a plain list; ``count_messages``, ``get_messages`` and ``get_keys`` must agree.

This is the interleaving that broke the native layout (insert at an index vs a pop: the
pop took the first message, or a deadlock; an append vs ``delete_messages``: an orphan
row counted nowhere), forced every time instead of once in a dozen runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.postgres import PostgresChatStore

MARK = "gated-write"
_GATE_LOCK = 7_340_012  # an advisory lock id no store derives (they hash schema, table, key)
_PATIENCE = 60.0  # seconds before a wait is reported as a hang (never a timing assertion)

Result = Any  # what an operation returned, messages replaced by their text


def _text(value: Any) -> Result:
    if isinstance(value, list):
        return [m.content for m in value]
    if value is None:
        return None
    return value.content


@dataclass(frozen=True)
class Op:
    """One store operation, its async twin, and what it does to a plain list."""

    label: str
    call: Callable[[PostgresChatStore, str], Any]
    acall: Callable[[PostgresChatStore, str], Awaitable[Any]]
    model: Callable[[list[str]], Result]

    def run(self, store: PostgresChatStore, key: str, api: str) -> Result:
        if api == "async":
            return _text(asyncio.run(self.acall(store, key)))  # type: ignore[arg-type]
        return _text(self.call(store, key))


def append(text: str) -> Op:
    def model(items: list[str]) -> None:
        items.append(text)

    return Op(
        f"append({text})",
        lambda s, k: s.add_message(k, ChatMessage(content=text)),
        lambda s, k: s.aadd_message(k, ChatMessage(content=text)),
        model,
    )


def append_many(*texts: str) -> Op:
    def model(items: list[str]) -> None:
        items.extend(texts)

    return Op(
        f"add_messages{texts}",
        lambda s, k: s.add_messages(k, [ChatMessage(content=t) for t in texts]),
        lambda s, k: s.aadd_messages(k, [ChatMessage(content=t) for t in texts]),
        model,
    )


def insert(idx: int, text: str) -> Op:
    def model(items: list[str]) -> None:
        items.insert(idx, text)

    return Op(
        f"insert({idx}, {text})",
        lambda s, k: s.add_message(k, ChatMessage(content=text), idx=idx),
        lambda s, k: s.aadd_message(k, ChatMessage(content=text), idx=idx),
        model,
    )


def pop() -> Op:
    def model(items: list[str]) -> Result:
        return items.pop() if items else None

    return Op(
        "pop", lambda s, k: s.delete_last_message(k), lambda s, k: s.adelete_last_message(k), model
    )


def delete_at(idx: int) -> Op:
    def model(items: list[str]) -> Result:
        return items.pop(idx) if -len(items) <= idx < len(items) else None

    return Op(
        f"delete_message({idx})",
        lambda s, k: s.delete_message(k, idx),
        lambda s, k: s.adelete_message(k, idx),
        model,
    )


def delete_oldest(n: int) -> Op:
    def model(items: list[str]) -> Result:
        removed = items[:n]
        del items[:n]
        return removed

    return Op(
        f"delete_oldest({n})",
        lambda s, k: s.delete_oldest_messages(k, n),
        lambda s, k: s.adelete_oldest_messages(k, n),
        model,
    )


def delete_all() -> Op:
    def model(items: list[str]) -> Result:
        removed = items[:]
        items.clear()
        return removed or None

    return Op(
        "delete_messages",
        lambda s, k: s.delete_messages(k),
        lambda s, k: s.adelete_messages(k),
        model,
    )


def clear() -> Op:
    def model(items: list[str]) -> None:
        items.clear()

    return Op("clear", lambda s, k: s.clear(), lambda s, k: s.aclear(), model)


def replace(*texts: str) -> Op:
    def model(items: list[str]) -> None:
        items[:] = texts

    return Op(
        f"set_messages{texts}",
        lambda s, k: s.set_messages(k, [ChatMessage(content=t) for t in texts]),
        lambda s, k: s.aset_messages(k, [ChatMessage(content=t) for t in texts]),
        model,
    )


PLAIN = ["m0", "m1", "m2", "m3"]

# A, the gated operation, with a starting conversation in which A writes or removes MARK.
FIRST: dict[str, tuple[list[str], Op]] = {
    "append": (PLAIN, append(MARK)),
    "insert": (PLAIN, insert(1, MARK)),
    "set": (PLAIN, replace("s0", MARK)),
    "pop": (["m0", "m1", "m2", MARK], pop()),
    "delete_first": ([MARK, "m1", "m2", "m3"], delete_at(0)),
    "delete_oldest": ([MARK, "m1", "m2", "m3"], delete_oldest(2)),
    "delete_all": (["m0", MARK, "m2"], delete_all()),
}

# B, started while A is held.
SECOND: dict[str, Op] = {
    "append": append("b"),
    "append_many": append_many("b0", "b1"),
    "insert": insert(1, "b"),
    "pop": pop(),
    "delete_at": delete_at(1),
    "delete_from_end": delete_at(-2),
    "delete_oldest": delete_oldest(2),
    "delete_all": delete_all(),
    "set": replace("b0", "b1"),
    "clear": clear(),
}

LAYOUTS = ["native", "native_locked", "google", "llama_index"]
"""``native_locked``: the native layout with removals run after the lock in a transaction, as
on YugabyteDB (no ``ctid``); the others run them as one statement (native: checked, run again
under the lock when stale) or one pipelined round trip (google)."""


class _LockedRemovals(PostgresChatStore):
    """The Postgres store with removals run as YugabyteDB runs them (no row versions)."""

    _row_versions = False


class Gate:
    """Holds any write of a row (message or LlamaIndex array) containing ``MARK``.

    The trigger takes a shared advisory lock the test holds exclusively while the gate
    is closed, so the writer waits inside its statement, keeping its locks.
    """

    def __init__(self, url: str, schema: str, table: str) -> None:
        self._admin = psycopg.connect(url, autocommit=True)
        function = f'"{schema}".chat_gate'
        self._admin.execute(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF (TG_OP <> 'DELETE' AND row_to_json(NEW)::text LIKE '%{MARK}%') "
            f"OR (TG_OP <> 'INSERT' AND row_to_json(OLD)::text LIKE '%{MARK}%') THEN "
            f"PERFORM pg_advisory_xact_lock_shared({_GATE_LOCK}); END IF; "
            "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END $$"
        )
        self._admin.execute(
            f'CREATE TRIGGER chat_gate BEFORE INSERT OR UPDATE OR DELETE ON "{schema}"."{table}" '
            f"FOR EACH ROW EXECUTE FUNCTION {function}()"
        )

    @contextlib.contextmanager
    def closed(self) -> Iterator[None]:
        self._admin.execute(f"SELECT pg_advisory_lock({_GATE_LOCK})")
        try:
            yield
        finally:
            self._admin.execute(f"SELECT pg_advisory_unlock({_GATE_LOCK})")

    def lock_wait(self, application: str) -> str | None:
        """What the backend of ``application`` waits for, if it waits for a lock."""
        row = self._admin.execute(
            "SELECT wait_event FROM pg_stat_activity "
            "WHERE application_name = %s AND wait_event_type = 'Lock'",
            (application,),
        ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self._admin.close()


def _wait_until(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.005)


@dataclass
class Racers:
    a: PostgresChatStore
    b: PostgresChatStore
    gate: Gate
    variant: str

    @property
    def a_name(self) -> str:
        """Store A's ``application_name``."""
        return f"racer_a_{self.variant}"

    @property
    def b_name(self) -> str:
        """Store B's ``application_name``."""
        return f"racer_b_{self.variant}"


@pytest.fixture(scope="module", params=LAYOUTS)
def racers(request: pytest.FixtureRequest, database_url_for_module: str) -> Iterator[Racers]:
    """Two store instances over one table of ``layout``, and the gate on that table."""
    variant = request.param
    layout = "native" if variant == "native_locked" else variant
    kind = _LockedRemovals if variant == "native_locked" else PostgresChatStore
    schema = f"race_{variant}_{uuid.uuid4().hex[:8]}"

    def store(application: str) -> PostgresChatStore:
        return kind.from_uri(
            f"{database_url_for_module}?application_name={application}",
            schema_name=schema,
            layout=layout,
        )

    a, b = store(f"racer_a_{variant}"), store(f"racer_b_{variant}")
    a.init_table()
    gate = Gate(database_url_for_module, schema, a.table_name)
    yield Racers(a, b, gate, variant)
    a.close()
    b.close()
    gate.close()


def _race(racers: Racers, key: str, first: Op, second: Op, api: str) -> tuple[Any, Any]:
    """Run ``first`` held at the gate, then ``second``; return each one's result or error."""
    a_name, b_name = racers.a_name, racers.b_name
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with racers.gate.closed():
            held = pool.submit(first.run, racers.a, key, api)
            _wait_until(
                f"{first.label} waits at the gate",
                lambda: held.done() or racers.gate.lock_wait(a_name) == "advisory",
            )
            assert not held.done(), f"{first.label} never reached the gate: {held.exception()}"
            other = pool.submit(second.run, racers.b, key, api)
            _wait_until(
                f"{second.label} finishes or waits for a lock",
                lambda: other.done() or racers.gate.lock_wait(b_name) is not None,
            )
        outcomes = []
        for future in (held, other):
            error = future.exception(timeout=_PATIENCE)
            outcomes.append(future.result() if error is None else f"raised {error!r}")
    return outcomes[0], outcomes[1]


def _explanations(initial: list[str], first: Op, second: Op) -> list[tuple[Any, Any, list[str]]]:
    """(A's result, B's result, final list) for A-then-B and for B-then-A."""
    a_first, b_first = list(initial), list(initial)
    a_then = first.model(a_first)
    b_after = second.model(a_first)
    b_then = second.model(b_first)
    a_after = first.model(b_first)
    return [(a_then, b_after, a_first), (a_after, b_then, b_first)]


def _check(racers: Racers, key: str, initial: list[str], first: Op, second: Op, api: str) -> None:
    racers.a.set_messages(key, [ChatMessage(content=t) for t in initial])
    got_a, got_b = _race(racers, key, first, second, api)
    final = _text(racers.b.get_messages(key))
    allowed = _explanations(initial, first, second)
    assert (got_a, got_b, final) in allowed, (
        f"from {initial}: {first.label} -> {got_a!r} and {second.label} -> {got_b!r} left "
        f"{final}; a list gives one of {allowed}"
    )
    count = racers.b.count_messages(key)
    assert count == len(final), f"count_messages says {count}, get_messages shows {final}"
    listed = key in racers.b.get_keys()
    assert listed == bool(final), f"get_keys lists the key: {listed}; it holds {final}"
    racers.b.add_message(key, ChatMessage(content="later"))
    count = racers.a.count_messages(key)
    assert count == len(final) + 1, f"after one more append count_messages says {count}"


@pytest.mark.parametrize("second", list(SECOND))
@pytest.mark.parametrize("first", list(FIRST))
def test_two_instances_mixed_operations_are_linearizable(
    racers: Racers, first: str, second: str
) -> None:
    """A held mid-write while B runs: results and final list match A;B or B;A on a list.

    If this fails: some operation reads message rows before taking the conversation's
    lock (native: the conversation row; Google's table: the advisory lock on the key), or
    takes locks in another order than the others (deadlock), or its statement's snapshot
    predates the lock (it acts on the conversation as it was before A committed).
    """
    initial, op = FIRST[first]
    _check(racers, f"k-{uuid.uuid4().hex[:8]}", initial, op, SECOND[second], "sync")


ASYNC_PAIRS = [
    ("insert", "pop"),
    ("pop", "insert"),
    ("append", "delete_all"),
    ("insert", "delete_all"),
    ("append", "append"),
    ("delete_all", "append"),
]


@pytest.mark.parametrize(("first", "second"), ASYNC_PAIRS)
def test_two_instances_mixed_operations_are_linearizable_async(
    racers: Racers, first: str, second: str
) -> None:
    """The same through the async methods (asyncpg, their own transactions).

    If this fails: an async method takes its locks differently from its sync twin.
    """
    initial, op = FIRST[first]
    _check(racers, f"k-{uuid.uuid4().hex[:8]}", initial, op, SECOND[second], "async")


def test_a_read_never_sees_a_later_append_before_an_earlier_one(racers: Racers) -> None:
    """While an append is held mid-statement, a second append and a read: prefix order.

    If this fails: ids are assigned before the conversation's lock is taken (Google's
    SERIAL), so a read showed ``b`` without the earlier ``MARK`` that sorts before it.
    """
    key = f"k-{uuid.uuid4().hex[:8]}"
    racers.a.set_messages(key, [ChatMessage(content="m0")])
    seen: list[list[str]] = []

    def append_then_read(store: PostgresChatStore, k: str) -> None:
        store.add_message(k, ChatMessage(content="b"))
        seen.append(_text(store.get_messages(k)))

    second = Op("append(b) then read", append_then_read, None, lambda items: None)  # type: ignore[arg-type]
    _race(racers, key, append(MARK), second, "sync")
    final = _text(racers.b.get_messages(key))
    assert final in (["m0", MARK, "b"], ["m0", "b", MARK])
    for read in seen:
        assert final[: len(read)] == read, f"read {read} while the conversation became {final}"


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_deadlock_with_a_foreign_writer_is_retried(
    database_url_for_module: str, api: str
) -> None:
    """A transaction the server aborts as a deadlock runs again and succeeds.

    A foreign session holds the last message's row, our pop holds the conversation and
    waits for that row, then the foreign session asks for the conversation: a cycle. The
    foreign session waits 30 s before checking for deadlocks, so the server aborts ours.

    If this fails: a deadlock (40P01) or serialization failure (40001) surfaces as a
    generic ChatStoreError instead of being run again (the aborted work changed nothing).
    """
    schema = f"dl_{uuid.uuid4().hex[:8]}"
    store = PostgresChatStore.from_uri(
        f"{database_url_for_module}?application_name=deadlocked", schema_name=schema
    )
    store.set_messages("k", [ChatMessage(content="m0"), ChatMessage(content="m1")])
    table = f'"{schema}".chatstore'
    with (
        psycopg.connect(database_url_for_module) as foreign,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        foreign.execute("SET deadlock_timeout = '30s'")
        foreign.execute(
            f"SELECT id FROM {table} WHERE key = 'k' ORDER BY id DESC LIMIT 1 FOR UPDATE"
        )
        popped = pool.submit(pop().run, store, "k", api)
        watcher = psycopg.connect(database_url_for_module, autocommit=True)

        def pop_waits() -> bool:
            row = watcher.execute(
                "SELECT 1 FROM pg_stat_activity "
                "WHERE application_name = 'deadlocked' AND wait_event_type = 'Lock'"
            ).fetchone()
            return popped.done() or row is not None

        _wait_until("the pop waits for the foreign session's row", pop_waits)
        watcher.close()
        foreign.execute(f"SELECT 1 FROM {table}_conversations WHERE key = 'k' FOR UPDATE")
        foreign.commit()
        assert popped.result(timeout=_PATIENCE) == "m1"
    assert _text(store.get_messages("k")) == ["m0"]
    assert store.count_messages("k") == 1
    store.close()


# A, held at the gate, changes the conversation under an insert at an index (B): the
# insert must place its message by the conversation A leaves, or by the one before A.
INSERT_UNDER: dict[str, tuple[list[str], Op]] = {
    "set_on_missing": ([], replace("s0", MARK, "s2")),
    "set_on_existing": (PLAIN, replace("s0", MARK, "s2")),
    "add_messages_on_missing": ([], append_many("s0", MARK, "s2")),
    "add_messages_on_existing": (PLAIN, append_many("s0", MARK, "s2")),
    "delete_all": (["m0", MARK, "m2"], delete_all()),
}


@pytest.mark.parametrize("idx", [1, -1])
@pytest.mark.parametrize("under", list(INSERT_UNDER))
def test_an_insert_at_an_index_places_by_the_conversation_after_the_lock(
    racers: Racers, under: str, idx: int
) -> None:
    """An insert at an index started while set/add_messages/delete_messages is held.

    The conversation may not exist yet when the insert starts (set_messages or
    add_messages create it): the insert must still wait for that writer and count its
    messages, not place the message by the empty conversation it saw first.

    If this fails: the insert's lock found no conversation row to wait for (native: the
    row is not created by the lock), so it appended at the end of what the other writer
    then committed instead of inserting at ``idx``.
    """
    initial, op = INSERT_UNDER[under]
    _check(racers, f"k-{uuid.uuid4().hex[:8]}", initial, op, insert(idx, "b"), "sync")


@pytest.mark.parametrize("under", ["set_on_missing", "add_messages_on_missing"])
def test_an_insert_at_an_index_places_by_the_conversation_after_the_lock_async(
    racers: Racers, under: str
) -> None:
    """The same through the async methods.

    If this fails: ``aadd_message`` with an index takes its lock differently from its twin.
    """
    initial, op = INSERT_UNDER[under]
    _check(racers, f"k-{uuid.uuid4().hex[:8]}", initial, op, insert(1, "b"), "async")


class _PausedAfterLock:
    """Holds store B's next transaction right after its first statement (the lock).

    Stands for a slow client between the two statements of a removal: the conversation
    is created by another writer after B's lock ran and before B's change starts. Only
    removals run after the lock have that gap (``native_locked``, and native removals run
    again under the lock); a single statement or a pipelined pair never pauses here.
    """

    def __init__(self, store: PostgresChatStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paused = threading.Event()
        self.resume = threading.Event()
        sync, async_ = store._connections(), store._aconnections()
        real_sync, real_async = sync.transaction, async_.transaction

        def pause_once() -> None:
            if not self.paused.is_set():
                self.paused.set()
                assert self.resume.wait(_PATIENCE), "never resumed"

        def transaction(body: Callable[[Any], Any]) -> Any:
            def paused(tx: Any) -> Any:
                class Tx:
                    def fetch(self, clause: Any, params: Any) -> Any:
                        rows = tx.fetch(clause, params)
                        pause_once()
                        return rows

                return body(Tx())

            return real_sync(paused)

        async def atransaction(body: Callable[[Any], Awaitable[Any]]) -> Any:
            async def paused(tx: Any) -> Any:
                class Tx:
                    async def fetch(self, clause: Any, params: Any) -> Any:
                        rows = await tx.fetch(clause, params)
                        pause_once()  # blocks this loop's thread: only B runs on it
                        return rows

                return await body(Tx())

            return await real_async(paused)

        monkeypatch.setattr(sync, "transaction", transaction)
        monkeypatch.setattr(async_, "transaction", atransaction)


def _read() -> Op:
    return Op(
        "get_messages",
        lambda s, k: s.get_messages(k),
        lambda s, k: s.aget_messages(k),
        lambda items: list(items),
    )


REMOVALS_OF_NEW = {
    "delete_oldest": delete_oldest(3),
    "pop": pop(),
    "delete_first": delete_at(0),
    "delete_all": delete_all(),
}


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("removal", list(REMOVALS_OF_NEW))
def test_a_removal_whose_lock_found_no_conversation_acts_on_none(
    racers: Racers, monkeypatch: pytest.MonkeyPatch, removal: str, api: str
) -> None:
    """B's lock finds no conversation; then A creates it; then B's change runs.

    B (a removal) is paused after its lock. A creates the conversation with ``MARK``.
    B resumes and is held at the gate if it removes ``MARK``. C appends and a read runs
    while B is held. Every result and the final conversation must be explained by one
    order of A, B, C and the read on a plain list.

    If this fails: the native lock (``SELECT ... FOR UPDATE`` on the conversation row)
    locked nothing because the row did not exist yet, and the change that followed acted
    on the conversation A committed without holding its lock: C appended meanwhile, the
    read showed ``MARK`` and ``c``, and B removed ``MARK`` alone (as if before C).
    """
    key = f"k-{uuid.uuid4().hex[:8]}"
    racers.a.set_messages(key, [])
    b_name = racers.b_name
    a_op, b_op, c_op, read = append_many(MARK), REMOVALS_OF_NEW[removal], append("c"), _read()
    pause = _PausedAfterLock(racers.b, monkeypatch)
    a_name = racers.a_name
    seen: Any = None
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        b = pool.submit(b_op.run, racers.b, key, api)
        _wait_until(f"{b_op.label} takes its lock", lambda: b.done() or pause.paused.is_set())
        # Google's advisory lock holds A off until B is done; the native row lock did not.
        a = pool.submit(a_op.run, racers.a, key, api)
        _wait_until(
            "A creates the conversation or waits for B's lock",
            lambda: a.done() or racers.gate.lock_wait(a_name) is not None,
        )
        c: concurrent.futures.Future[Any] | None = None
        with racers.gate.closed():  # now holds B if it removes MARK
            pause.resume.set()
            _wait_until(
                f"{b_op.label} finishes or waits at the gate",
                lambda: b.done() or racers.gate.lock_wait(b_name) is not None,
            )
            if a.done():
                c = pool.submit(c_op.run, racers.a, key, api)
                _wait_until(
                    "C finishes or waits",
                    lambda: (
                        c is not None and (c.done() or racers.gate.lock_wait(a_name) is not None)
                    ),
                )
                if c.done():
                    seen = read.run(racers.b, key, api)
        results = {"A": a.result(timeout=_PATIENCE), "B": b.result(timeout=_PATIENCE)}
        c_result = c.result(timeout=_PATIENCE) if c is not None else None
    if c is None:
        c_result = c_op.run(racers.a, key, api)
    if seen is None:
        seen = read.run(racers.b, key, api)
    results["C"], results["read"] = c_result, seen
    final = _text(racers.b.get_messages(key))
    ops = {"A": a_op, "B": b_op, "C": c_op, "read": read}
    explained = []
    for order in itertools.permutations(ops):
        items: list[str] = []
        got = {name: ops[name].model(items) for name in order}
        if got == results and items == final:
            explained.append(order)
    assert explained, f"{results} leaving {final}: no order of A, B, C and the read explains it"
    assert racers.b.count_messages(key) == len(final)
