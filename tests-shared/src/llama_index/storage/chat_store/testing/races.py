"""Deterministic races: one call of instance A, paused before each of its requests in turn.

A store's own race tests use this to show that an operation acts on one state of a
conversation whatever another instance does meanwhile. Instance A runs one call; before its
k-th request to the server it stops while instance B, in another thread, runs its whole list
of operations; then A goes on. Every k from 0 to A's request count is tried, so each place
where B's changes can land inside A is covered, deterministically (no sleeps, no timing).
A's result, B's results and (for changes) the final conversation must be what a plain list
gives with A run before, between or after B's operations.

The backend only says where its requests go out: it calls :meth:`RequestGate.before_request`
before each one, from a driver hook (botocore's ``before-call`` event) or through
:class:`GatedClient`, a proxy of a client object whose public methods each send a request::

    gate = RequestGate()
    a_store = MyChatStore(client=GatedClient(raw_client, gate), table=table)
    failures = every_interleaving(lambda: (a_store, gate), b_store, pop(), [[insert("B0", 0)]])
    assert not failures, failures
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage

__all__ = [
    "INITIAL",
    "GatedClient",
    "Op",
    "RequestGate",
    "allowed",
    "count",
    "delete_all",
    "delete_at",
    "delete_oldest",
    "every_interleaving",
    "get",
    "insert",
    "pop",
    "run_round",
    "set_to",
    "stale_reads",
    "texts",
]

Texts = list[str]
Outcome = tuple[Any, list[Any], Texts]
"""(A's result, B's results, the conversation's texts afterwards)."""

INITIAL: Texts = ["i0", "i1", "i2", "i3", "i4"]
"""The conversation each round starts from, unless told otherwise."""

_WAIT = 30  # seconds a barrier waits for the other thread before the round fails


def texts(value: Any) -> Any:
    """A store result as plain text: a message, a list of messages, or anything else as is."""
    if isinstance(value, list):
        return [m.content for m in value]
    if isinstance(value, ChatMessage):
        return value.content
    return value


@dataclass(frozen=True)
class Op:
    """One call, on a store and on the list model (which it may change); both return text."""

    name: str
    on_store: Callable[[BaseChatStore, str], Any]
    on_list: Callable[[Texts], Any]


def insert(text: str, idx: int | None) -> Op:
    """``add_message(key, text, idx=idx)`` (``None``: an append)."""

    def on_list(items: Texts) -> None:
        items.insert(len(items) if idx is None else idx, text)

    return Op(
        f"add({text}, idx={idx})",
        lambda s, k: s.add_message(k, ChatMessage(content=text), idx=idx),
        on_list,
    )


def delete_at(idx: int) -> Op:
    """``delete_message(key, idx)``."""

    def on_list(items: Texts) -> str | None:
        return items.pop(idx) if -len(items) <= idx < len(items) else None

    return Op(f"delete_message({idx})", lambda s, k: texts(s.delete_message(k, idx)), on_list)


def delete_oldest(n: int) -> Op:
    """``delete_oldest_messages(key, n)``."""

    def on_list(items: Texts) -> Texts:
        taken = items[:n]
        del items[:n]
        return taken

    return Op(f"delete_oldest({n})", lambda s, k: texts(s.delete_oldest_messages(k, n)), on_list)


def pop() -> Op:
    """``delete_last_message(key)``."""
    return Op(
        "pop",
        lambda s, k: texts(s.delete_last_message(k)),
        lambda items: items.pop() if items else None,
    )


def delete_all() -> Op:
    """``delete_messages(key)``."""

    def on_list(items: Texts) -> Texts | None:
        taken = list(items)
        items.clear()
        return taken or None

    return Op("delete_all", lambda s, k: texts(s.delete_messages(k)), on_list)


def set_to(new: Texts) -> Op:
    """``set_messages(key, new)``."""

    def on_list(items: Texts) -> None:
        items[:] = new

    return Op(
        f"set({new})",
        lambda s, k: s.set_messages(k, [ChatMessage(content=t) for t in new]),
        on_list,
    )


def get(offset: int = 0, limit: int | None = None) -> Op:
    """``get_messages(key, offset=offset, limit=limit)``."""
    return Op(
        f"get(offset={offset}, limit={limit})",
        lambda s, k: texts(s.get_messages(k, offset=offset, limit=limit)),
        lambda items: items[offset:][:limit],
    )


def count() -> Op:
    """``count_messages(key)``."""
    return Op("count", lambda s, k: s.count_messages(k), len)


class RequestGate:
    """Counts the requests of A's client and runs ``pause`` before request number ``at``."""

    def __init__(self) -> None:
        self.at = -1
        self.calls = 0
        self.pause: Callable[[], None] = lambda: None

    def before_request(self) -> None:
        """Call before each request A's client sends."""
        if self.calls == self.at:
            self.pause()
        self.calls += 1


class GatedClient:
    """A proxy of a client object: each call of a public method passes the gate first."""

    def __init__(self, client: Any, gate: RequestGate) -> None:
        self._client = client
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._gate.before_request()
            return attribute(*args, **kwargs)

        return call


def allowed(a: Op, b: Sequence[Op], initial: Texts = INITIAL) -> list[Outcome]:
    """The outcomes of A run before, between or after B's operations on a plain list."""
    outcomes = []
    for a_at in range(len(b) + 1):
        items = list(initial)
        b_results: list[Any] = []
        a_result = None
        for i, op in enumerate([*b[:a_at], a, *b[a_at:]]):
            if i == a_at:
                a_result = a.on_list(items)
            else:
                b_results.append(op.on_list(items))
        outcomes.append((a_result, b_results, items))
    return outcomes


def run_round(
    a_store: BaseChatStore,
    gate: RequestGate,
    b_store: BaseChatStore,
    a: Op,
    b: Sequence[Op],
    at: int,
    *,
    initial: Texts = INITIAL,
    a_writes_initial: bool = False,
    a_reads_first: bool = False,
) -> tuple[Outcome, int]:
    """Run A with all of B's operations, in another thread, before A's request ``at``.

    The conversation (a fresh key) starts as ``initial``, written by B's store, or by A's
    with ``a_writes_initial`` (so A starts with what it remembers of its own write); with
    ``a_reads_first`` A reads it before the round (a store that remembers what it read then
    plans on a state B may make stale). Returns the outcome and how many requests A sent;
    when A sent fewer than ``at``, B ran after it.
    """
    key = f"k-{uuid.uuid4().hex[:8]}"
    (a_store if a_writes_initial else b_store).set_messages(
        key, [ChatMessage(content=t) for t in initial]
    )
    if a_reads_first:
        a_store.get_messages(key)
    start = threading.Barrier(2, timeout=_WAIT)
    done = threading.Barrier(2, timeout=_WAIT)
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
    gate.calls, gate.at, gate.pause = 0, at, pause
    try:
        outcome["a"] = a.on_store(a_store, key)
    finally:
        gate.at = -1
        if not paused:
            pause()  # A finished before request ``at``: B runs after it
        b_thread.join(timeout=_WAIT)
    final = texts(b_store.get_messages(key))
    return (outcome["a"], outcome["b"], final), gate.calls


def every_interleaving(
    make_a: Callable[[], tuple[BaseChatStore, RequestGate]],
    b_store: BaseChatStore,
    a: Op,
    bs: Sequence[Sequence[Op]],
    *,
    final_too: bool = True,
    initial: Texts = INITIAL,
    a_writes_initial: bool = False,
    a_reads_first: bool = False,
) -> list[str]:
    """Run A against each of ``bs`` landing before every request of A; return the failures.

    Args:
        make_a: Returns A's store and the gate its requests pass (called once per round:
            a new instance per round, or the same one).
        b_store: B's store, over the same storage.
        a: A's call.
        bs: B's operation lists; each is tried at every request of A.
        final_too: Also compare the final conversation (for A's that change it); reads
            compare only the results.
        initial: The conversation each round starts from.
        a_writes_initial: A's store writes the initial conversation (see :func:`run_round`).
        a_reads_first: A reads the conversation before each round (see :func:`run_round`).

    Returns:
        One line per round whose outcome no order explains (empty when all pass).
    """
    failures = []
    for b in bs:
        at = 0
        while True:
            a_store, gate = make_a()
            got, calls = run_round(
                a_store, gate, b_store, a, b, at, initial=initial,
                a_writes_initial=a_writes_initial, a_reads_first=a_reads_first,
            )  # fmt: skip
            want = allowed(a, b, initial)
            if (got if final_too else got[:2]) not in [o if final_too else o[:2] for o in want]:
                names = ", ".join(op.name for op in b)
                failures.append(f"B=[{names}] before A's request {at}: got {got}, want {want}")
            at += 1
            if at > calls:
                break
    return failures


def stale_reads(
    a_store: BaseChatStore,
    b_store: BaseChatStore,
    reads: Sequence[Op],
    b: Sequence[Op],
    initial: Texts = INITIAL,
) -> list[str]:
    """Check that A's reads see B's finished changes though A remembers an older state.

    For each read, A writes a fresh conversation (so it remembers it), B runs all of ``b``
    to the end, then A reads. Returns one line per read that did not see B's changes.
    """
    failures = []
    for read in reads:
        key = f"k-{uuid.uuid4().hex[:8]}"
        a_store.set_messages(key, [ChatMessage(content=t) for t in initial])
        items = list(initial)
        for op in b:
            op.on_store(b_store, key)
            op.on_list(items)
        got, want = read.on_store(a_store, key), read.on_list(items)
        if got != want:
            names = ", ".join(op.name for op in b)
            failures.append(f"{read.name} after B=[{names}]: got {got}, want {want}")
    return failures
