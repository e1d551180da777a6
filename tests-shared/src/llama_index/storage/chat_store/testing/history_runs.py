"""Concurrent histories of every store operation, made on a store and checked.

Several clients (processes, each with its own store instance, for stores that are
SHARED; threads on one instance otherwise) issue a seeded random mix of every call on one
conversation at once, every other call through its async twin (``aadd_message``...).
Each call is recorded with its start and end on a clock every process shares
(``time.monotonic_ns``), its arguments and its result, and the history is checked by
:func:`.history.check_history`.

:func:`run_histories` is what the conformance suite calls.
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
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from typing import Any

from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    BaseChatStore,
    Capability,
    ChatMessage,
)
from llama_index.storage.chat_store.testing.history import (
    Call,
    State,
    check_history,
    format_history,
    linearize,
    shrink,
)

__all__ = [
    "MIX",
    "HistoryReport",
    "plan_calls",
    "run_histories",
    "seed_from_environment",
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
