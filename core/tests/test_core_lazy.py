"""Lazy and PerLoop: the clients a backend makes on first use, once, or once per event loop."""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import weakref
from collections.abc import Callable

import pytest

from llama_index.storage.chat_store.core.backend import Lazy, PerLoop


class Client:
    """Stands for a driver client: numbered, and records when and on which loop it closes."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.loop = asyncio.get_running_loop()
        self.closed_on: asyncio.AbstractEventLoop | None = None

    async def aclose(self) -> None:
        await asyncio.sleep(0)  # a real close awaits I/O on the client's own loop
        self.closed_on = asyncio.get_running_loop()


def numbered() -> Callable[[], Client]:
    counter = itertools.count(1)
    return lambda: Client(next(counter))


# -- Lazy ----------------------------------------------------------------------------------


def test_lazy_makes_the_value_once_for_concurrent_threads() -> None:
    """Threads racing on the first get() share one value.

    If this fails: the double-checked lock in Lazy.get() lets two threads run the factory.
    """
    made: list[object] = []
    started = threading.Barrier(8)

    def factory() -> object:
        made.append(object())
        return made[-1]

    lazy = Lazy(factory)
    seen: list[object] = []

    def worker() -> None:
        started.wait()
        seen.append(lazy.get())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1
    assert seen == made * 8


def test_lazy_take_returns_and_forgets() -> None:
    """take() hands the value back once; the next get() makes a new one (a store reconnects).

    If this fails: take() does not clear the value, or get() does not rebuild it.
    """
    counter = itertools.count(1)
    lazy = Lazy(lambda: next(counter))
    assert lazy.take() is None
    assert lazy.get() == 1
    assert lazy.take() == 1
    assert lazy.take() is None
    assert lazy.get() == 2


# -- PerLoop -------------------------------------------------------------------------------


def test_one_value_per_loop_across_asyncio_run_calls() -> None:
    """Calls in one loop share its value; a second asyncio.run gets a new one.

    If this fails: PerLoop hands a client bound to a finished loop to a new loop.
    """
    clients = PerLoop(numbered())

    async def twice() -> tuple[Client, Client]:
        return clients.get(), clients.get()

    first, again = asyncio.run(twice())
    second, _ = asyncio.run(twice())
    assert first is again
    assert first.number == 1
    assert second.number == 2
    assert second.loop is not first.loop


def test_a_worker_thread_loop_gets_its_own_value() -> None:
    """A loop running in another thread gets its own value; the calling loop keeps its own.

    If this fails: entries are not keyed by the running loop.
    """
    clients = PerLoop(numbered())

    async def main() -> tuple[Client, Client, Client]:
        mine = clients.get()
        theirs = await asyncio.to_thread(asyncio.run, _get(clients))
        return mine, theirs, clients.get()

    mine, theirs, mine_again = asyncio.run(main())
    assert mine_again is mine
    assert theirs is not mine
    assert theirs.loop is not mine.loop


async def _get(clients: PerLoop[Client]) -> Client:
    return clients.get()


def test_a_closed_loops_value_is_dropped_and_handed_to_on_drop() -> None:
    """A closed loop's value is forgotten when the next loop makes its own, and given to on_drop.

    If this fails: PerLoop keeps clients of finished loops forever (a leak per asyncio.run).
    """
    dropped: list[Client] = []
    clients = PerLoop(numbered(), on_drop=dropped.append)
    first = asyncio.run(_get(clients))
    assert dropped == []
    second = asyncio.run(_get(clients))
    assert dropped == [first]
    assert second is not first


def test_a_finished_loop_is_not_kept_alive() -> None:
    """The cache holds loops weakly: a finished, unreferenced loop is freed.

    If this fails: entries hold their loop strongly.
    """
    clients: PerLoop[object] = PerLoop(object)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_touch(clients))
    loop.close()
    freed = weakref.ref(loop)
    del loop
    gc.collect()
    assert freed() is None


async def _touch(clients: PerLoop[object]) -> None:
    clients.get()


def test_take_returns_the_running_loops_value_and_forgets_it() -> None:
    """take() returns this loop's value once; the next get() in the loop makes a new one.

    If this fails: a store's aclose() would close a client it then hands out again.
    """
    clients = PerLoop(numbered())

    async def main() -> tuple[Client, Client | None, Client | None, Client]:
        first = clients.get()
        return first, clients.take(), clients.take(), clients.get()

    first, taken, none, fresh = asyncio.run(main())
    assert taken is first
    assert none is None
    assert fresh.number == 2


def test_take_all_returns_live_loops_values_and_drops_closed_ones() -> None:
    """take_all() returns every open loop's value with its loop; closed ones go to on_drop.

    If this fails: a store's close() misses clients of other loops, or tries to close
    clients of closed loops on those loops.
    """
    dropped: list[Client] = []
    clients = PerLoop(numbered(), on_drop=dropped.append)
    closed = asyncio.run(_get(clients))

    async def main() -> tuple[Client, list[tuple[asyncio.AbstractEventLoop, Client]]]:
        mine = clients.get()
        return mine, clients.take_all()

    mine, taken = asyncio.run(main())
    assert taken == [(mine.loop, mine)]
    assert dropped == [closed]
    assert asyncio.run(_take_all(clients)) == []


async def _take_all(clients: PerLoop[Client]) -> list[tuple[asyncio.AbstractEventLoop, Client]]:
    return clients.take_all()


def test_aclose_runs_on_the_values_own_loop_at_shutdown() -> None:
    """With aclose=, asyncio.run's shutdown closes each value inside its own loop.

    If this fails: the keeper async generator is not registered with the loop, or its
    finally does not close the value.
    """
    clients = PerLoop(numbered(), aclose=Client.aclose)
    client = asyncio.run(_get(clients))
    assert client.closed_on is client.loop
    assert asyncio.run(_get(clients)) is not client


def test_aclose_at_shutdown_skips_a_taken_value() -> None:
    """A value taken before the loop ends is the taker's to close, not closed again.

    If this fails: the keeper closes a value the store already closed (double close).
    """
    clients = PerLoop(numbered(), aclose=Client.aclose)

    async def main() -> tuple[Client, Client | None, Client]:
        first = clients.get()
        taken = clients.take()
        return first, taken, clients.get()

    first, taken, second = asyncio.run(main())
    assert taken is first
    assert first.closed_on is None
    assert second.closed_on is second.loop


def test_a_failing_factory_leaves_nothing_behind() -> None:
    """A factory that raises stores nothing; the next get() in the loop tries again.

    If this fails: one failed connect attempt poisons the loop's entry for good.
    """
    attempts = itertools.count(1)

    def factory() -> int:
        attempt = next(attempts)
        if attempt == 1:
            raise ConnectionError("server down")
        return attempt

    clients = PerLoop(factory)

    async def main() -> int:
        with pytest.raises(ConnectionError):
            clients.get()
        return clients.get()

    assert asyncio.run(main()) == 2


def test_get_outside_a_running_loop_raises() -> None:
    """get() and take() need a running loop.

    If this fails: PerLoop invents a loop, hiding an event loop inside sync code.
    """
    clients = PerLoop(numbered())
    with pytest.raises(RuntimeError):
        clients.get()
    with pytest.raises(RuntimeError):
        clients.take()
