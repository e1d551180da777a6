"""Two store instances doing different things to one conversation at once, in both layouts.

Instance A runs one operation; before its k-th request to Tablestore it stops at a barrier
while instance B, in another thread, runs a whole other operation; then A goes on. Every k
from 0 to A's request count is tried, so each place where B's change can land inside A is
covered, deterministically. The outcome (A's result, B's result, the final conversation) must
be one that running A and B one after the other, in some order, gives on a plain list. A
either wrote the conversation first (and remembers its meta row, which B then makes stale)
or has never seen it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.tablestore import TablestoreChatStore

Texts = list[str]
_INITIAL = ["i0", "i1", "i2"]


def _texts(value: Any) -> Any:
    """A store result as plain text: a message, a list of messages, or None."""
    if isinstance(value, list):
        return [m.content for m in value]
    return value.content if value is not None else None


@dataclass(frozen=True)
class Change:
    """One mutating operation, on a store and on the list model."""

    name: str
    on_store: Callable[[TablestoreChatStore, str], Any]
    on_list: Callable[[Texts], Any]


def _insert(text: str, idx: int | None) -> Change:
    def on_list(items: Texts) -> None:
        items.insert(len(items) if idx is None else idx, text)

    return Change(
        f"add({text}, idx={idx})",
        lambda s, k: s.add_message(k, ChatMessage(content=text), idx=idx),
        on_list,
    )


def _delete_at(idx: int) -> Change:
    def on_list(items: Texts) -> str | None:
        return items.pop(idx) if -len(items) <= idx < len(items) else None

    return Change(f"delete_message({idx})", lambda s, k: _texts(s.delete_message(k, idx)), on_list)


def _oldest(n: int) -> Change:
    def on_list(items: Texts) -> Texts:
        taken = items[:n]
        del items[:n]
        return taken

    return Change(
        f"delete_oldest({n})", lambda s, k: _texts(s.delete_oldest_messages(k, n)), on_list
    )


def _pop() -> Change:
    return Change(
        "pop",
        lambda s, k: _texts(s.delete_last_message(k)),
        lambda items: items.pop() if items else None,
    )


def _delete_all() -> Change:
    def on_list(items: Texts) -> Texts | None:
        taken = list(items)
        items.clear()
        return taken or None

    return Change("delete_all", lambda s, k: _texts(s.delete_messages(k)), on_list)


def _set(texts: Texts) -> Change:
    def on_list(items: Texts) -> None:
        items[:] = texts

    return Change(
        f"set({texts})",
        lambda s, k: s.set_messages(k, [ChatMessage(content=t) for t in texts]),
        on_list,
    )


def _then(first: Change, second: Change) -> Change:
    """Both changes, one after the other, as one."""

    def on_list(items: Texts) -> tuple[Any, Any]:
        return first.on_list(items), second.on_list(items)

    return Change(
        f"{first.name}, {second.name}",
        lambda s, k: (first.on_store(s, k), second.on_store(s, k)),
        on_list,
    )


def _get(offset: int = 0, limit: int | None = None) -> Change:
    return Change(
        f"get(offset={offset}, limit={limit})",
        lambda s, k: _texts(s.get_messages(k, offset=offset, limit=limit)),
        lambda items: items[offset:][:limit],
    )


# Reads of every window kind against changes that move either end, retire the generation,
# or free the last slot and fill it again (a pop, then an append).
_A_READS = [_get(), _get(offset=-2), _get(offset=1, limit=1)]
_B_FOR_READS = [
    _insert("B0", None), _insert("B0", 0), _pop(), _oldest(1), _delete_at(1), _delete_all(),
    _set(["T0", "T1"]), _then(_pop(), _insert("B0", None)),
]  # fmt: skip
# Removals at every position kind (last, first, inside, all), appends and inserts, a replace;
# B adds the changes that move each end, renumber, or retire the generation.
_A_CHANGES = [
    _delete_at(2), _delete_at(0), _delete_at(1), _pop(), _oldest(1), _oldest(3), _delete_all(),
    _insert("A0", None), _insert("A0", 0), _insert("A0", 1), _set(["S0"]),
]  # fmt: skip
_B_CHANGES = [
    _insert("B0", None), _insert("B0", 0), _pop(), _oldest(1), _delete_all(), _set(["T0", "T1"]),
]  # fmt: skip


class _PausingClient:
    """An OTSClient proxy that, before request ``at``, runs ``pause`` (counts every request)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.at = -1
        self.calls = 0
        self.pause: Callable[[], None] = lambda: None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.calls == self.at:
                self.pause()
            self.calls += 1
            return attribute(*args, **kwargs)

        return call


def _allowed(a: Change, b: Change) -> list[tuple[Any, Any, Texts]]:
    """(A's result, B's result, final texts) of both sequential orders."""
    outcomes = []
    for a_first in (True, False):
        items = list(_INITIAL)
        if a_first:
            a_result, b_result = a.on_list(items), b.on_list(items)
        else:
            b_result = b.on_list(items)
            a_result = a.on_list(items)
        outcomes.append((a_result, b_result, items))
    return outcomes


def _round(
    make_a: Callable[[], tuple[TablestoreChatStore, _PausingClient]],
    b_store: TablestoreChatStore,
    a: Change,
    b: Change,
    at: int,
    a_saw_it: bool = True,
) -> tuple[tuple[Any, Any, Texts], int]:
    """Run A, with B's whole operation in its own thread before A's request ``at``."""
    key = f"k-{uuid.uuid4().hex[:8]}"
    a_store, client = make_a()
    writer = a_store if a_saw_it else b_store  # A remembers the meta row it wrote
    writer.set_messages(key, [ChatMessage(content=t) for t in _INITIAL])
    start = threading.Barrier(2, timeout=30)
    done = threading.Barrier(2, timeout=30)
    outcome: dict[str, Any] = {}

    def run_b() -> None:
        start.wait()
        try:
            outcome["b"] = b.on_store(b_store, key)
        finally:
            done.wait()

    paused = []

    def pause() -> None:
        paused.append(True)
        start.wait()
        done.wait()

    b_thread = threading.Thread(target=run_b)
    b_thread.start()
    client.calls, client.at, client.pause = 0, at, pause
    try:
        outcome["a"] = a.on_store(a_store, key)
    finally:
        client.at = -1
        if not paused:
            pause()  # A finished before request ``at``: B runs after it
        b_thread.join(timeout=30)
    final = [m.content for m in b_store.get_messages(key)]
    return (outcome["a"], outcome["b"], final), client.calls


@pytest.fixture(params=["native", "llama_index"])
def layout(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=[True, False], ids=["A saw it", "A new"])
def a_saw_it(request: pytest.FixtureRequest) -> bool:
    """Whether A wrote the conversation first (and remembers its meta row)."""
    return bool(request.param)


def _every_interleaving(
    new_store: Callable[..., Any], raw_client: Any, layout: str, a: Change,
    bs: list[Change], a_saw_it: bool,
) -> list[str]:  # fmt: skip
    factory = new_store(layout=layout)
    table = factory().table_name
    b_store = factory()

    def make_a() -> tuple[TablestoreChatStore, _PausingClient]:
        client = _PausingClient(raw_client)
        store = TablestoreChatStore(tablestore_client=client, table_name=table, layout=layout)
        return store, client

    failures = []
    for b in bs:
        at = 0
        while True:
            got, calls = _round(make_a, b_store, a, b, at, a_saw_it)
            allowed = _allowed(a, b)
            if got not in allowed:
                failures.append(f"B={b.name} before A's request {at}: got {got}, want {allowed}")
            at += 1
            if at > calls:
                break
    return failures


@pytest.mark.parametrize("a", _A_CHANGES, ids=lambda c: c.name)
def test_change_with_another_landing_at_every_request(
    new_store: Callable[..., Any], raw_client: Any, layout: str, a: Change, a_saw_it: bool
) -> None:
    """A's operation and B's, at every interleaving, equal A then B or B then A.

    If this fails: an operation of A re-read the conversation between planning and
    committing (and acted on a state it did not plan against), or committed without a
    condition on what it read.
    """
    failures = _every_interleaving(new_store, raw_client, layout, a, _B_CHANGES, a_saw_it)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("a", _A_READS, ids=lambda c: c.name)
def test_read_with_another_landing_at_every_request(
    new_store: Callable[..., Any], raw_client: Any, layout: str, a: Change, a_saw_it: bool
) -> None:
    """A read returns the conversation as it was before or after B's change.

    If this fails: a read took its window from one state of the conversation and the rows
    from another (a stale meta row it remembered, or one that moved while it read).
    """
    failures = _every_interleaving(new_store, raw_client, layout, a, _B_FOR_READS, a_saw_it)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("layout_name", ["native", "llama_index"])
@pytest.mark.parametrize("idx", [None, 3])
def test_delete_at_the_end_while_appending_removes_the_planned_message(
    new_store: Callable[..., Any], raw_client: Any, layout_name: str, idx: int | None
) -> None:
    """``delete_message(key, 2)`` of [i0, i1, i2] returns i2 even when A0 is appended meanwhile.

    If this fails: the delete re-read the conversation after planning (it popped the new
    last message, A0, instead of the one at position 2).
    """
    factory = new_store(layout=layout_name)
    table = factory().table_name
    client = _PausingClient(raw_client)
    a_store = TablestoreChatStore(tablestore_client=client, table_name=table, layout=layout_name)
    got, _ = _round(lambda: (a_store, client), factory(), _delete_at(2), _insert("A0", idx), 1)
    assert got == ("i2", None, ["i0", "i1", "A0"])


@pytest.mark.parametrize("b", _B_FOR_READS, ids=lambda c: c.name)
def test_a_read_after_another_change_sees_it(
    new_store: Callable[..., Any], layout: str, b: Change
) -> None:
    """A read sees every change finished before it, though the store remembers an older state.

    If this fails: a read trusted the meta row the store remembered (its own last write)
    without checking it against the table, and returned a conversation already changed.
    """
    factory = new_store(layout=layout)
    a_store, b_store = factory(), factory()
    for read in _A_READS:
        key = f"k-{uuid.uuid4().hex[:8]}"
        a_store.set_messages(key, [ChatMessage(content=t) for t in _INITIAL])
        items = list(_INITIAL)
        b.on_store(b_store, key)
        b.on_list(items)
        assert read.on_store(a_store, key) == read.on_list(items), read.name
