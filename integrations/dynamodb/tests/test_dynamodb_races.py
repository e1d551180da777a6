"""Two store instances on one conversation, one landing inside the other, in both layouts.

Instance A runs one call; before its k-th request to DynamoDB it stops while instance B, in
another thread, runs its whole operation (or several); then A goes on. Every k from 0 to A's
request count is tried, so each place where B's change can land inside A is covered,
deterministically. A's result must be one that a plain list gives when A runs before, between
or after B's operations, and for two changes the final conversation must match that order.
Each case runs twice: with A new to the conversation, and with A having read it before B's
changes (A then plans and batches on what it remembers, which B may have made stale).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import botocore.session
import pytest

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore

Texts = list[str]
_INITIAL = ["i0", "i1", "i2", "i3", "i4"]


def _texts(value: Any) -> Any:
    """A store result as plain text: a message, a list of messages, or None."""
    if isinstance(value, list):
        return [m.content for m in value]
    return value.content if value is not None else None


@dataclass(frozen=True)
class Op:
    """One call, on a store and on the list model (which it may change)."""

    name: str
    on_store: Callable[[DynamoDBChatStore, str], Any]
    on_list: Callable[[Texts], Any]


def _insert(text: str, idx: int | None) -> Op:
    def on_list(items: Texts) -> None:
        items.insert(len(items) if idx is None else idx, text)

    return Op(
        f"add({text}, idx={idx})",
        lambda s, k: s.add_message(k, ChatMessage(content=text), idx=idx),
        on_list,
    )


def _delete_at(idx: int) -> Op:
    def on_list(items: Texts) -> str | None:
        return items.pop(idx) if -len(items) <= idx < len(items) else None

    return Op(f"delete_message({idx})", lambda s, k: _texts(s.delete_message(k, idx)), on_list)


def _oldest(n: int) -> Op:
    def on_list(items: Texts) -> Texts:
        taken = items[:n]
        del items[:n]
        return taken

    return Op(f"delete_oldest({n})", lambda s, k: _texts(s.delete_oldest_messages(k, n)), on_list)


def _pop() -> Op:
    return Op(
        "pop",
        lambda s, k: _texts(s.delete_last_message(k)),
        lambda items: items.pop() if items else None,
    )


def _delete_all() -> Op:
    def on_list(items: Texts) -> Texts | None:
        taken = list(items)
        items.clear()
        return taken or None

    return Op("delete_all", lambda s, k: _texts(s.delete_messages(k)), on_list)


def _set(texts: Texts) -> Op:
    def on_list(items: Texts) -> None:
        items[:] = texts

    return Op(
        f"set({texts})",
        lambda s, k: s.set_messages(k, [ChatMessage(content=t) for t in texts]),
        on_list,
    )


def _get(offset: int = 0, limit: int | None = None) -> Op:
    return Op(
        f"get(offset={offset}, limit={limit})",
        lambda s, k: _texts(s.get_messages(k, offset=offset, limit=limit)),
        lambda items: items[offset:][:limit],
    )


def _count() -> Op:
    return Op("count", lambda s, k: s.count_messages(k), len)


# Reads of every window kind against B's changes that move either end, renumber the head or
# the tail (inserts and deletes inside), retire the generation, or reuse a position (a pop,
# then an append at the same place).
_READS = [_get(), _get(offset=-2), _get(offset=1, limit=2), _count()]
_READ_B = [
    [_insert("B0", -1)], [_insert("B0", 1)], [_insert("B0", 0)], [_insert("B0", None)],
    [_delete_at(1)], [_delete_at(3)], [_delete_at(0)], [_pop()], [_oldest(2)],
    [_set(["T0", "T1"])], [_delete_all()], [_pop(), _insert("B0", None)],
    [_delete_at(3), _insert("B0", None)],
]  # fmt: skip
# Removals (each reads what it removes) and inserts against the renumbering changes, and
# against a conversation deleted and written anew (its meta item starts over).
_CHANGES = [
    _delete_at(1), _delete_at(3), _delete_at(0), _delete_at(-1), _pop(), _oldest(2),
    _delete_all(), _insert("A0", 1), _insert("A0", -1), _insert("A0", None),
]  # fmt: skip
_CHANGE_B = [
    [_insert("B0", -1)], [_insert("B0", 1)], [_delete_at(1)], [_delete_at(3)], [_pop()],
    [_insert("B0", None)], [_delete_all(), _set(["T0", "T1", "T2", "T3", "T4"])],
]  # fmt: skip


class _Pauser:
    """Runs ``pause`` before request ``at`` of the clients of one botocore session."""

    def __init__(self) -> None:
        self.session = botocore.session.Session()
        self.session.register("before-call.dynamodb", self._before_call)
        self.at = -1
        self.calls = 0
        self.pause: Callable[[], None] = lambda: None

    def _before_call(self, **_: Any) -> None:
        if self.calls == self.at:
            self.pause()
        self.calls += 1


def _allowed(a: Op, b: Sequence[Op]) -> list[tuple[Any, list[Any], Texts]]:
    """(A's result, B's results, final texts) with A before, between or after B's calls."""
    outcomes = []
    for a_at in range(len(b) + 1):
        items = list(_INITIAL)
        b_results: list[Any] = []
        a_result = None
        for i, op in enumerate([*b[:a_at], a, *b[a_at:]]):
            if i == a_at:
                a_result = a.on_list(items)
            else:
                b_results.append(op.on_list(items))
        outcomes.append((a_result, b_results, items))
    return outcomes


def _round(
    a_store: DynamoDBChatStore,
    pauser: _Pauser,
    b_store: DynamoDBChatStore,
    a: Op,
    b: Sequence[Op],
    at: int,
    a_saw_it: bool,
) -> tuple[tuple[Any, list[Any], Texts], int]:
    """Run A, with all of B's calls in another thread before A's request ``at``."""
    key = f"k-{uuid.uuid4().hex[:8]}"
    b_store.set_messages(key, [ChatMessage(content=t) for t in _INITIAL])
    if a_saw_it:
        a_store.get_messages(key)
    start = threading.Barrier(2, timeout=30)
    done = threading.Barrier(2, timeout=30)
    outcome: dict[str, Any] = {}

    def run_b() -> None:
        start.wait()
        try:
            outcome["b"] = [op.on_store(b_store, key) for op in b]
        finally:
            done.wait()

    paused = []

    def pause() -> None:
        paused.append(True)
        start.wait()
        done.wait()

    b_thread = threading.Thread(target=run_b)
    b_thread.start()
    pauser.calls, pauser.at, pauser.pause = 0, at, pause
    try:
        outcome["a"] = a.on_store(a_store, key)
    finally:
        pauser.at = -1
        if not paused:
            pause()  # A finished before request ``at``: B runs after it
        b_thread.join(timeout=30)
    final = [m.content for m in b_store.get_messages(key)]
    return (outcome["a"], outcome["b"], final), pauser.calls


@pytest.fixture(params=[False, True], ids=["A new", "A saw it"])
def a_saw_it(request: pytest.FixtureRequest) -> bool:
    """Whether A reads the conversation before B's changes (and remembers what it saw)."""
    return bool(request.param)


@pytest.fixture(params=["native", "llama_index"])
def stores(moto: Any, request: pytest.FixtureRequest, a_saw_it: bool) -> Iterator[tuple[Any, ...]]:
    """(A's store, its pauser, B's store, whether A saw it) on one fresh table of the layout."""
    layout = request.param
    table = moto.store(layout).table_name
    pauser = _Pauser()
    a_store = DynamoDBChatStore(
        table_name=table, layout=layout, botocore_session=pauser.session,
        endpoint_url=moto.url, **moto.credentials,
    )  # fmt: skip
    b_store = DynamoDBChatStore(
        table_name=table, layout=layout, endpoint_url=moto.url, **moto.credentials
    )
    a_store.count_messages("warm-up")  # client creation is not one of A's requests
    yield a_store, pauser, b_store, a_saw_it
    a_store.close()
    b_store.close()


def _every_interleaving(
    stores: tuple[Any, ...], a: Op, bs: Sequence[Sequence[Op]], *, final_too: bool
) -> list[str]:
    a_store, pauser, b_store, a_saw_it = stores
    failures = []
    for b in bs:
        at = 0
        while True:
            got, calls = _round(a_store, pauser, b_store, a, b, at, a_saw_it)
            allowed = _allowed(a, b)
            seen = got if final_too else got[:2]
            if seen not in [o if final_too else o[:2] for o in allowed]:
                names = ", ".join(op.name for op in b)
                failures.append(f"B=[{names}] before A's request {at}: got {got}, want {allowed}")
            at += 1
            if at > calls:
                break
    return failures


@pytest.mark.parametrize("a", _READS, ids=lambda op: op.name)
def test_a_read_sees_one_state_whatever_lands_inside_it(stores: tuple[Any, ...], a: Op) -> None:
    """A read returns the conversation as it was before, between or after B's changes.

    If this fails: a read took its range from one state of the conversation and the items
    from another (an insert or delete inside renumbered, or a pop and an append reused, the
    positions it read), returning a list that never existed.
    """
    failures = _every_interleaving(stores, a, _READ_B, final_too=False)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("a", _CHANGES, ids=lambda op: op.name)
def test_a_change_acts_on_one_state_whatever_lands_inside_it(
    stores: tuple[Any, ...], a: Op
) -> None:
    """A removal or insert and B's change, at every interleaving, equal one order of the two.

    If this fails: a removal read what it removes from a state that was renumbered meanwhile
    and committed or returned it anyway.
    """
    failures = _every_interleaving(stores, a, _CHANGE_B, final_too=True)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("layout", ["native", "llama_index"])
@pytest.mark.parametrize("b", _READ_B, ids=lambda ops: ", ".join(op.name for op in ops))
def test_a_read_after_another_change_sees_it(moto: Any, layout: str, b: Sequence[Op]) -> None:
    """A read sees every change finished before it, though A remembers an older state.

    If this fails: a read trusted the meta item the store remembered without checking it
    against the table, and returned a conversation already changed.
    """
    a_store = moto.store(layout)
    b_store = moto.factory(a_store)()
    for read in _READS:
        key = f"k-{uuid.uuid4().hex[:8]}"
        a_store.set_messages(key, [ChatMessage(content=t) for t in _INITIAL])
        items = list(_INITIAL)
        for op in b:
            op.on_store(b_store, key)
            op.on_list(items)
        assert read.on_store(a_store, key) == read.on_list(items), read.name
