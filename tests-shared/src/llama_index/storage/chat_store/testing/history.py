"""Concurrent histories of every store operation, checked for linearizability.

Several clients (processes, each with its own store instance, for stores that are
SHARED; threads on one instance otherwise) issue a seeded random mix of every call on one
conversation at once, every other call through its async twin (``aadd_message``...).
Each call is recorded with its start and end on a clock every process shares
(``time.monotonic_ns``), its arguments and its result. The checker then looks for a
sequential order of the calls, consistent with real time (a call that ended before another
started comes first), in which a plain Python list explains every result. Such an order
exists for every correct store; a lost update, a pop that returns the wrong message or a
count that disagrees with the rows has none.

The search is depth-first over (set of calls placed, list state), memoized, so histories of
a few clients with a few calls each check in milliseconds. A failing history is shrunk in
ways that keep it a counterexample: it is cut at the earliest point where it already fails
(calls still running at the cut keep their effect but lose their result), and reads that are
not needed to fail are dropped.

:func:`run_histories` is what the conformance suite calls; :func:`check_history`,
:func:`linearize` and :func:`shrink` are the checker, usable on any recorded history.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import multiprocessing
import os
import pickle
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.synchronize import Barrier
from typing import Any

from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    BaseChatStore,
    Capability,
    ChatMessage,
)

__all__ = [
    "MIX",
    "Call",
    "HistoryReport",
    "apply",
    "check_history",
    "format_history",
    "linearize",
    "plan_calls",
    "run_histories",
    "seed_from_environment",
    "shrink",
]

CLIENTS = 3
"""Clients running at once in each round."""

CALLS_PER_CLIENT = 6
"""Calls each client makes in a round (kept small: the check is exponential in the worst case)."""

ROUNDS = 30
"""Rounds at the default size; ``CHAT_STORE_HISTORY_SCALE`` multiplies it."""

BUDGET_SECONDS = 6.0
"""Rounds stop after this long (times the scale; the first round, which may start the worker
processes, is not counted) once :data:`MIN_ROUNDS` are done: slow emulators stay in CI's budget."""

MIN_ROUNDS = 5
"""Rounds always run, whatever they take (times the scale)."""

SCALE_VARIABLE = "CHAT_STORE_HISTORY_SCALE"
SEED_VARIABLE = "CHAT_STORE_HISTORY_SEED"
_BARRIER_TIMEOUT = 120.0  # the first round of a fresh process pool includes its imports

State = tuple[str, ...]

MIX: Mapping[str, int] = {
    "append": 3,
    "append_many": 1,
    "insert": 3,
    "delete_at": 2,
    "pop": 3,
    "delete_oldest": 1,
    "set": 1,
    "delete_all": 2,
    "get": 3,
    "count": 2,
}
"""Operation -> weight in the random mix. Inserts, pops and deletes by position are weighted
up: they renumber positions, which is where the races live."""

_READS = frozenset({"get", "count"})


@dataclass(frozen=True)
class Call:
    """One recorded call on the conversation.

    Attributes:
        client: Which client made it (``-1`` for the quiescent reads after a round).
        name: The operation (a key of the model, see :func:`apply`).
        args: Its arguments, message texts standing for messages.
        start: ``time.monotonic_ns()`` just before the call.
        end: ``time.monotonic_ns()`` just after it returned or raised; ``None`` when it is
            still running (its effect may or may not have happened, its result is unknown).
        result: What it returned, texts for messages, tuples for lists.
        error: ``"Type: message"`` when it raised (its effect may or may not have happened).
        api: ``"sync"``, or ``"async"`` when it went through the ``a*`` twin.
    """

    client: int
    name: str
    args: tuple[Any, ...]
    start: int
    end: int | None
    result: Any = None
    error: str | None = None
    api: str = "sync"

    @property
    def checked(self) -> bool:
        """Whether its result must be explained (it returned normally)."""
        return self.end is not None and self.error is None


# -- the model ---------------------------------------------------------------------------


def apply(state: State, name: str, args: tuple[Any, ...]) -> tuple[State, Any]:
    """Run one operation on a plain list; return the new state and the call's result."""
    items = list(state)
    result: Any = None
    if name == "append":
        items.append(args[0])
    elif name == "append_many":
        items.extend(args[0])
    elif name == "set":
        items = list(args[0])
    elif name == "insert":
        items.insert(args[0], args[1])
    elif name == "delete_at":
        result = items.pop(args[0]) if -len(items) <= args[0] < len(items) else None
    elif name == "pop":
        result = items.pop() if items else None
    elif name == "delete_oldest":
        result, items = tuple(items[: args[0]]), items[args[0] :]
    elif name == "delete_all":
        result, items = (tuple(items) or None), []
    elif name == "get":
        window = items[args[0] :]
        result = tuple(window if args[1] is None else window[: args[1]])
    elif name == "count":
        result = len(items)
    else:
        raise ValueError(f"unknown operation {name!r}")
    return tuple(items), result


# -- the checker -------------------------------------------------------------------------


def linearize(initial: Sequence[str], calls: Sequence[Call]) -> list[Call] | None:
    """Return an order of ``calls`` explaining every checked result, or ``None``.

    The order respects real time: a call that ended before another started comes first.
    Calls still running or that raised may be placed anywhere after their start (and before
    their end, if any) or left out; their results are not checked.
    """
    never = max((c.end or c.start for c in calls), default=0) + 1
    ends = [c.end if c.end is not None else never for c in calls]
    starts = [c.start for c in calls]
    needed = sum(1 << i for i, c in enumerate(calls) if c.checked)
    optional = [i for i, c in enumerate(calls) if not c.checked]
    seen: set[tuple[int, State]] = set()

    def search(done: int, state: State) -> list[int] | None:
        if done & needed == needed:
            return []
        if (done, state) in seen:
            return None
        seen.add((done, state))
        horizon = min(ends[i] for i in range(len(calls)) if needed >> i & 1 and not done >> i & 1)
        for i, call in enumerate(calls):
            if done >> i & 1 or starts[i] > horizon:
                continue
            after, result = apply(state, call.name, call.args)
            if call.checked and result != call.result:
                continue
            # An optional call that ended before this one started can no longer happen.
            expired = sum(1 << j for j in optional if not done >> j & 1 and ends[j] < starts[i])
            rest = search(done | 1 << i | expired, after)
            if rest is not None:
                return [i, *rest]
        return None

    order = search(0, tuple(initial))
    return None if order is None else [calls[i] for i in order]


def check_history(
    initial: Sequence[str], calls: Sequence[Call], *, tolerated: Sequence[str] = ()
) -> list[str]:
    """Return the problems of one round's history (empty when it is correct).

    Cheap invariants first, so the message says what went wrong in plain words, then
    linearizability. The quiescent reads (client ``-1``) end the history. A call that raised
    is a problem unless its error's type is named in ``tolerated``; either way its effect may
    or may not have happened.
    """
    problems = [
        f"{_show_call(c)} raised {c.error}"
        for c in calls
        if c.error is not None and c.error.partition(":")[0] not in tolerated
    ]
    problems += _invariant_problems(initial, calls)
    if linearize(initial, calls) is None:
        problems.append(
            "no sequential order of these calls consistent with real time explains every result"
        )
    return problems


def _invariant_problems(initial: Sequence[str], calls: Sequence[Call]) -> list[str]:
    problems: list[str] = []
    final = [c for c in calls if c.client == -1]
    got = next((c for c in final if c.name == "get" and c.checked), None)
    count = next((c for c in final if c.name == "count" and c.checked), None)
    if got is None:
        return problems
    present = list(got.result)
    if count is not None and count.result != len(present):
        problems.append(
            f"count_messages() == {count.result} but get_messages() holds {len(present)} "
            "messages with no call running"
        )
    written = set(initial)
    overwrites: list[Call] = []
    for call in calls:
        if call.name in ("append", "insert"):
            written.add(call.args[-1])
        elif call.name in ("append_many", "set"):
            written.update(call.args[0])
        if call.name == "set" or call.error is not None:
            overwrites.append(call)
    removed = [text for c in calls if c.checked for text in _removed_texts(c)]
    seen = present + removed
    for text in sorted({t for t in seen if seen.count(t) > 1}):
        problems.append(f"message {text!r} is held or returned {seen.count(text)} times")
    for text in sorted(set(seen) - written):
        problems.append(f"message {text!r} was never written")
    for text in sorted(written - set(seen)):
        origin = _writer(initial, calls, text)
        unacknowledged = origin is not None and not origin.checked
        if unacknowledged or any(c is not origin and _may_follow(c, origin) for c in overwrites):
            continue  # a later replace or a call that raised may have taken it
        problems.append(f"acknowledged message {text!r} is lost: neither held nor returned")
    return problems


def _removed_texts(call: Call) -> list[str]:
    if call.name in ("pop", "delete_at"):
        return [] if call.result is None else [call.result]
    if call.name in ("delete_oldest", "delete_all"):
        return list(call.result or ())
    return []


def _writer(initial: Sequence[str], calls: Sequence[Call], text: str) -> Call | None:
    if text in initial:
        return None
    for call in calls:
        texts = call.args[0] if call.name in ("append_many", "set") else call.args[-1:]
        if call.name in ("append", "insert", "append_many", "set") and text in texts:
            return call
    return None


def _may_follow(later: Call, earlier: Call | None) -> bool:
    return earlier is None or later.end is None or later.end > earlier.start


def shrink(initial: Sequence[str], calls: Sequence[Call]) -> list[Call]:
    """Return a smaller history that still has no linearization (``calls`` must have none).

    Both steps keep a counterexample a counterexample: cutting at a point in time (calls
    running at the cut keep their effect but lose their result, later calls go) cannot make a
    correct history incorrect, and neither can dropping a read.
    """
    ordered = sorted(calls, key=lambda c: c.start)
    shrunk = list(ordered)
    for cut in sorted({c.end for c in ordered if c.end is not None}):
        candidate = _cut(ordered, cut)
        if linearize(initial, candidate) is None:
            shrunk = candidate
            break
    for call in [c for c in shrunk if c.name in _READS]:
        candidate = [c for c in shrunk if c is not call]
        if linearize(initial, candidate) is None:
            shrunk = candidate
    return shrunk


def _cut(calls: Sequence[Call], cut: int) -> list[Call]:
    kept = []
    for call in calls:
        if call.start > cut:
            continue
        if call.end is not None and call.end <= cut:
            kept.append(call)
        elif call.name not in _READS:
            kept.append(replace(call, end=None, result=None, error=None))
    return kept


# -- showing a history -------------------------------------------------------------------


def _show_call(call: Call) -> str:
    a = call.args
    if call.name == "get":
        window = (f", offset={a[0]}" if a[0] else "") + (
            f", limit={a[1]}" if a[1] is not None else ""
        )
        text = f"get_messages(k{window})"
    elif call.name == "insert":
        text = f"add_message(k, {a[1]!r}, idx={a[0]})"
    elif call.name in ("append_many", "set"):
        text = f"{_METHODS[call.name]}(k, {list(a[0])!r})"
    else:
        text = f"{_METHODS[call.name]}({', '.join(['k', *map(repr, a)])})"
    if call.api == "async":
        text = f"await a{text}"
    return f"client {call.client}: {text}" if call.client >= 0 else f"after the round: {text}"


_METHODS = {
    "append": "add_message",
    "append_many": "add_messages",
    "delete_at": "delete_message",
    "pop": "delete_last_message",
    "delete_oldest": "delete_oldest_messages",
    "set": "set_messages",
    "delete_all": "delete_messages",
    "count": "count_messages",
}


def _show_result(call: Call) -> str:
    if call.error is not None:
        return f"raised {call.error}"
    if call.end is None:
        return "(still running at the cut: may or may not have taken effect)"
    result = list(call.result) if isinstance(call.result, tuple) else call.result
    return f"-> {result!r}"


def format_history(initial: Sequence[str], calls: Sequence[Call]) -> str:
    """Render a history as a table, times in milliseconds from its first call."""
    if not calls:
        return f"  initial {list(initial)!r}, no calls"
    origin = min(c.start for c in calls)
    lines = [f"  initial conversation: {list(initial)!r}"]
    for call in sorted(calls, key=lambda c: c.start):
        end = "   ..." if call.end is None else f"{(call.end - origin) / 1e6:7.2f}"
        lines.append(
            f"  [{(call.start - origin) / 1e6:7.2f} .. {end} ms] "
            f"{_show_call(call)} {_show_result(call)}"
        )
    return "\n".join(lines)


# -- making histories --------------------------------------------------------------------


def plan_calls(
    rng: random.Random, client: int, n: int, mix: Mapping[str, int] | None = None
) -> list[tuple[str, tuple[Any, ...]]]:
    """Return ``n`` random calls for ``client``; every message text written is unique.

    ``mix`` maps operation names (see :data:`MIX`) to weights; default :data:`MIX`.
    """
    mix = MIX if mix is None else mix
    names = list(mix)
    weights = list(mix.values())
    plan: list[tuple[str, tuple[Any, ...]]] = []
    for i in range(n):
        name = rng.choices(names, weights)[0]
        text = f"c{client}.{i}"
        batch = tuple(f"{text}{'abc'[j]}" for j in range(rng.randint(1, 3)))
        args: tuple[Any, ...] = {
            "append": (text,),
            "append_many": (batch,),
            "insert": (rng.randint(-3, 4), text),
            "delete_at": (rng.randint(-3, 3),),
            "pop": (),
            "delete_oldest": (rng.randint(0, 3),),
            "set": (batch[: rng.randint(0, 3)],),
            "delete_all": (),
            "get": rng.choice([(0, None), (0, None), (-2, None), (1, 2)]),
            "count": (),
        }[name]
        plan.append((name, args))
    return plan


def _texts(messages: list[ChatMessage] | None) -> tuple[str, ...] | None:
    return None if messages is None else tuple(str(m.content) for m in messages)


def _invoke(store: BaseChatStore, key: str, name: str, args: tuple[Any, ...]) -> Any:
    if name == "append":
        return store.add_message(key, ChatMessage(content=args[0]))
    if name == "append_many":
        return store.add_messages(key, [ChatMessage(content=t) for t in args[0]])
    if name == "insert":
        return store.add_message(key, ChatMessage(content=args[1]), idx=args[0])
    if name == "delete_at":
        return _text(store.delete_message(key, args[0]))
    if name == "pop":
        return _text(store.delete_last_message(key))
    if name == "delete_oldest":
        return _texts(store.delete_oldest_messages(key, args[0]))
    if name == "set":
        return store.set_messages(key, [ChatMessage(content=t) for t in args[0]])
    if name == "delete_all":
        return _texts(store.delete_messages(key))
    if name == "get":
        return _texts(store.get_messages(key, offset=args[0], limit=args[1]))
    return store.count_messages(key)


async def _ainvoke(store: BaseChatStore, key: str, name: str, args: tuple[Any, ...]) -> Any:
    """:func:`_invoke` through the async twins."""
    if name == "append":
        return await store.aadd_message(key, ChatMessage(content=args[0]))
    if name == "append_many":
        return await store.aadd_messages(key, [ChatMessage(content=t) for t in args[0]])
    if name == "insert":
        return await store.aadd_message(key, ChatMessage(content=args[1]), idx=args[0])
    if name == "delete_at":
        return _text(await store.adelete_message(key, args[0]))
    if name == "pop":
        return _text(await store.adelete_last_message(key))
    if name == "delete_oldest":
        return _texts(await store.adelete_oldest_messages(key, args[0]))
    if name == "set":
        return await store.aset_messages(key, [ChatMessage(content=t) for t in args[0]])
    if name == "delete_all":
        return _texts(await store.adelete_messages(key))
    if name == "get":
        return _texts(await store.aget_messages(key, offset=args[0], limit=args[1]))
    return await store.acount_messages(key)


def _text(message: ChatMessage | None) -> str | None:
    return None if message is None else str(message.content)


def _record(
    store: BaseChatStore,
    key: str,
    client: int,
    name: str,
    args: tuple[Any, ...],
    loop: asyncio.AbstractEventLoop | None = None,
) -> Call:
    """Make one call (through the async twin on ``loop`` when given) and record it."""
    api = "sync" if loop is None else "async"
    start = time.monotonic_ns()
    try:
        if loop is None:
            result = _invoke(store, key, name, args)
        else:
            result = loop.run_until_complete(_ainvoke(store, key, name, args))
    except Exception as exc:  # recorded; the round then fails on it
        return Call(client, name, args, start, time.monotonic_ns(), error=_describe(exc), api=api)
    return Call(client, name, args, start, time.monotonic_ns(), result, api=api)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line: the history is a table
    return f"{type(exc).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _run_plan(
    store: BaseChatStore,
    key: str,
    client: int,
    plan: Sequence[tuple[str, tuple[Any, ...]]],
    wait: Callable[[], object],
    *,
    own_loop: bool = False,
) -> list[Call]:
    """Run a client's calls, every other one through the async API (alternating by client).

    The async calls run on one event loop per thread, kept while the thread lives: a store's
    async clients belong to the loop that made them, as in an app. ``own_loop``: the thread
    ends with the round, so its loop is closed here.
    """
    loop = _thread_loop()
    try:
        # Connect before the start line, not during the race. Under injected faults a
        # warm-up call may run out of retries: the calls after the start line are checked.
        with contextlib.suppress(BackendUnavailableError):
            store.count_messages(key)
            loop.run_until_complete(store.acount_messages(key))
        wait()
        return [
            _record(store, key, client, name, args, loop if (client + i) % 2 else None)
            for i, (name, args) in enumerate(plan)
        ]
    finally:
        if own_loop:
            loop.close()


_loops = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
    return loop


# Worker-process state: the start-line barrier and the last store built (reused across
# rounds, so each worker keeps its own memory of the conversation as an app server would).
_barrier: Barrier | None = None
_cached: tuple[bytes, BaseChatStore] | None = None


def _init_worker(barrier: Barrier) -> None:
    global _barrier  # per-process state of a pool worker
    _barrier = barrier


def _worker_store(factory: Callable[[], BaseChatStore]) -> BaseChatStore:
    global _cached
    identity = pickle.dumps(factory)
    if _cached is None or _cached[0] != identity:
        if _cached is not None:
            with contextlib.suppress(Exception):  # its server may be gone with its test
                _cached[1].close()
        _cached = (identity, factory())
    return _cached[1]


def _worker_round(
    factory: Callable[[], BaseChatStore],
    key: str,
    client: int,
    plan: list[tuple[str, tuple[Any, ...]]],
) -> list[Call]:
    barrier = _barrier
    assert barrier is not None, "history worker started without its barrier"
    return _run_plan(
        _worker_store(factory), key, client, plan, lambda: barrier.wait(_BARRIER_TIMEOUT)
    )


class _ProcessClients:
    """A pool of spawned worker processes kept for the whole test session."""

    _pool: concurrent.futures.ProcessPoolExecutor | None = None

    @classmethod
    def run(
        cls,
        factory: Callable[[], BaseChatStore],
        key: str,
        plans: list[list[tuple[str, tuple[Any, ...]]]],
    ) -> list[list[Call]]:
        if cls._pool is None:
            context = multiprocessing.get_context("spawn")
            cls._pool = concurrent.futures.ProcessPoolExecutor(
                len(plans),
                mp_context=context,
                initializer=_init_worker,
                initargs=(context.Barrier(len(plans)),),
            )
            atexit.register(cls.shutdown)
        futures = [
            cls._pool.submit(_worker_round, factory, key, client, plan)
            for client, plan in enumerate(plans)
        ]
        try:
            return [f.result() for f in futures]
        except BaseException:
            cls.shutdown()  # a broken barrier or a dead worker: start afresh next time
            raise

    @classmethod
    def shutdown(cls) -> None:
        if cls._pool is not None:
            cls._pool.shutdown(wait=True, cancel_futures=True)
            cls._pool = None


def _run_threads(
    store: BaseChatStore, key: str, plans: list[list[tuple[str, tuple[Any, ...]]]]
) -> list[list[Call]]:
    barrier = threading.Barrier(len(plans))
    with concurrent.futures.ThreadPoolExecutor(len(plans)) as pool:
        futures = [
            pool.submit(
                _run_plan, store, key, client, plan, lambda: barrier.wait(60), own_loop=True
            )
            for client, plan in enumerate(plans)
        ]
        return [f.result() for f in futures]


# -- the suite's entry point -------------------------------------------------------------


@dataclass
class HistoryReport:
    """What :func:`run_histories` did: rounds and calls checked, or the first failure."""

    seed: int
    rounds: int = 0
    calls: int = 0
    seconds: float = 0.0
    failure: str | None = None


def _scale() -> float:
    raw = os.environ.get(SCALE_VARIABLE, "1")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"{SCALE_VARIABLE} must be a number, not {raw!r}") from None
    if scale <= 0:
        raise ValueError(f"{SCALE_VARIABLE} must be positive, not {raw!r}")
    return scale


def seed_from_environment() -> int:
    """``CHAT_STORE_HISTORY_SEED`` when set, else a random seed (printed with a failure)."""
    return int(os.environ.get(SEED_VARIABLE) or random.randrange(10**9))


def run_histories(
    store: BaseChatStore,
    factory: Callable[[], BaseChatStore],
    *,
    rounds: int | None = None,
    seed: int | None = None,
    mix: Mapping[str, int] | None = None,
    tolerated: Sequence[str] = (),
) -> HistoryReport:
    """Run rounds of concurrent random calls on one key each; stop at the first bad round.

    Args:
        store: An empty store; it sets up each round and makes the quiescent reads.
        factory: Builds the clients' own instances (in worker processes) when the store
            is SHARED; otherwise the clients are threads sharing ``store``.
        rounds: Exactly this many rounds; by default :data:`ROUNDS` times
            ``CHAT_STORE_HISTORY_SCALE``, fewer (never under :data:`MIN_ROUNDS`) when they
            take longer than :data:`BUDGET_SECONDS`.
        seed: The seed of the random calls (default ``CHAT_STORE_HISTORY_SEED`` or random).
        mix: Operation weights (default :data:`MIX`, every operation).
        tolerated: Names of error types a call may raise (see :func:`check_history`), for
            rounds run under injected faults.

    Returns:
        The report; ``failure`` holds the seed, the problems and a shrunk history.
    """
    if seed is None:
        seed = seed_from_environment()
    scale = _scale()
    total = rounds if rounds is not None else max(1, round(ROUNDS * scale))
    least = total if rounds is not None else max(1, round(MIN_ROUNDS * scale))
    report = HistoryReport(seed=seed)
    shared = Capability.SHARED in store.capabilities
    started = budget_start = time.monotonic()
    for number in range(total):
        if number == 1:
            budget_start = time.monotonic()
        elif number >= least and time.monotonic() - budget_start > BUDGET_SECONDS * scale:
            break
        rng = random.Random(f"{seed}:{number}")
        key = f"history-{number}"
        initial = tuple(f"i{j}" for j in range(rng.randint(0, 4)))
        if initial:
            store.add_messages(key, [ChatMessage(content=t) for t in initial])
        plans = [plan_calls(rng, c, CALLS_PER_CLIENT, mix) for c in range(CLIENTS)]
        if shared:
            per_client = _ProcessClients.run(factory, key, plans)
        else:
            per_client = _run_threads(store, key, plans)
        calls = [call for client in per_client for call in client]
        calls += [_record(store, key, -1, "get", (0, None)), _record(store, key, -1, "count", ())]
        problems = check_history(initial, calls, tolerated=tolerated)
        problems += _keys_problems(store, key, calls[-2])
        report.rounds, report.calls = number + 1, report.calls + len(calls)
        if problems:
            report.failure = _failure(seed, number, total, initial, calls, problems)
            break
        store.delete_messages(key)
    report.seconds = time.monotonic() - started
    return report


def _keys_problems(store: BaseChatStore, key: str, got: Call) -> list[str]:
    if not got.checked:
        return []
    keys = store.get_keys()
    expected = [key] if got.result else []
    if sorted(keys) != expected:
        return [f"get_keys() == {keys!r} but get_messages(k) holds {len(got.result)} messages"]
    return []


def _failure(
    seed: int,
    number: int,
    total: int,
    initial: State,
    calls: list[Call],
    problems: list[str],
) -> str:
    lines = [
        f"round {number} of at most {total} (seed {seed}; rerun with {SEED_VARIABLE}={seed}) on "
        f"conversation k = 'history-{number}':",
        *(f"- {p}" for p in problems),
    ]
    if linearize(initial, calls) is None:
        smallest = shrink(initial, calls)
        lines += [
            f"smallest failing part of the history ({len(smallest)} of {len(calls)} calls):",
            format_history(initial, smallest),
        ]
    lines += ["whole round:", format_history(initial, calls)]
    return "\n".join(lines)
