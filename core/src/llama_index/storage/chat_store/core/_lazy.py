"""Values made on first use: one per store (:class:`Lazy`), one per event loop (:class:`PerLoop`).

Constructing a store never connects, so a backend builds its clients when an operation first
needs them, from whichever thread gets there first. Async drivers (``redis.asyncio``,
asyncpg, aiohttp sessions) also bind their connections to the event loop that opened them,
and a store is used from many loops one after another: ``asyncio.run`` twice,
pytest-asyncio's loop per test, a worker thread running its own loop. Such a store keeps
one async client per loop. These two classes are that bookkeeping, written once; they know
nothing of any driver.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["Lazy", "PerLoop"]

T = TypeVar("T")

_LoopRef = weakref.ref[asyncio.AbstractEventLoop]


class Lazy(Generic[T]):
    """One value, made by ``factory`` on the first :meth:`get` (e.g. a sync driver client).

    Thread-safe: concurrent first calls make the value once. After :meth:`take` the next
    :meth:`get` makes a new one, so a closed store reconnects when used again.

    Args:
        factory: Makes the value; must not return ``None``. Called with a lock held, so it
            must not call back into this object.
    """

    __slots__ = ("_factory", "_lock", "_value")

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        """Return the value, making it if there is none (the hot path takes no lock)."""
        value = self._value
        if value is None:
            with self._lock:
                value = self._value
                if value is None:
                    value = self._value = self._factory()
        return value

    def take(self) -> T | None:
        """Forget and return the value (``None`` if none was made); the caller closes it."""
        with self._lock:
            value, self._value = self._value, None
        return value


class _Entry(Generic[T]):
    __slots__ = ("keeper", "value")

    def __init__(self, value: T) -> None:
        self.value = value
        self.keeper: AsyncGenerator[None, None] | None = None


class PerLoop(Generic[T]):
    """One value per event loop, made by ``factory`` on the first :meth:`get` in that loop.

    Thread-safe: any thread may call any method; each loop's value is made once. The hot
    path (the running loop already has its value) is one dict lookup and takes no lock.

    Entries are keyed by a weak reference to the loop object, neither by the loop itself
    nor by ``id(loop)``. A strong key would keep a finished loop, and with it its
    client's sockets and buffers, alive for as long as the store lives. An ``id`` is free
    for reuse as soon as its loop is freed, and a new loop allocated at the same address
    would receive a client bound to the dead one. A weak reference compares by the loop's
    identity while the loop lives, and a dead reference equals only itself, so a new loop
    never meets an old loop's entry.

    Entries of loops that have closed (or been garbage-collected) are dropped whenever an
    entry is made or taken. Their values cannot be closed properly: closing an async client
    needs its own loop. ``on_drop`` receives them to release what can be released without
    the loop; otherwise the garbage collector reclaims them.

    Args:
        factory: Makes the running loop's value (called in that loop, with a lock held: it
            must not call back into this object, and it should not do I/O).
        on_drop: Given each value of a loop found closed, after it was forgotten.
        aclose: Closes a value inside its own loop when that loop shuts down its async
            generators (``asyncio.run`` and pytest-asyncio do, before closing the loop),
            unless the value was taken before. To that end each loop's entry starts an
            async generator the loop tracks; its ``finally`` forgets the entry and awaits
            ``aclose(value)``. Without ``aclose`` a loop's value lives until the loop is
            seen closed, or until taken.
    """

    __slots__ = ("_aclose", "_entries", "_factory", "_lock", "_on_drop")

    def __init__(
        self,
        factory: Callable[[], T],
        *,
        on_drop: Callable[[T], object] | None = None,
        aclose: Callable[[T], Awaitable[object]] | None = None,
    ) -> None:
        self._factory = factory
        self._on_drop = on_drop
        self._aclose = aclose
        self._entries: dict[_LoopRef, _Entry[T]] = {}
        self._lock = threading.Lock()

    def get(self) -> T:
        """Return the running loop's value, making it on the first call in this loop.

        Raises:
            RuntimeError: No event loop is running in this thread.
        """
        key = weakref.ref(asyncio.get_running_loop())
        entry = self._entries.get(key)
        if entry is None:
            entry = self._make(key)
        return entry.value

    def take(self) -> T | None:
        """Forget and return the running loop's value (``None`` if it has none).

        The caller closes it (in this loop, as a store's ``aclose`` does); ``aclose`` is not
        called for it. The next :meth:`get` in this loop makes a new value.

        Raises:
            RuntimeError: No event loop is running in this thread.
        """
        key = weakref.ref(asyncio.get_running_loop())
        with self._lock:
            dropped = self._drop_closed()
            entry = self._entries.pop(key, None)
        self._dropped(dropped)
        if entry is None:
            return None
        if entry.keeper is not None:
            # Finish the keeper now rather than when it is collected (which would schedule
            # a task on this loop); its finally finds no entry, so it awaits nothing.
            _step(entry.keeper.aclose())
        return entry.value

    def take_all(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        """Forget every value; return those of loops not closed, each with its loop.

        Values of closed loops go to ``on_drop``. The caller closes or releases the others,
        each on its own loop (transports are not thread-safe); ``aclose`` is not called.
        """
        with self._lock:
            entries, self._entries = self._entries, {}
        taken: list[tuple[asyncio.AbstractEventLoop, T]] = []
        dropped: list[_Entry[T]] = []
        for key, entry in entries.items():
            loop = key()
            if loop is None or loop.is_closed():
                dropped.append(entry)
            else:
                taken.append((loop, entry.value))
        self._dropped(dropped)
        return taken

    def _make(self, key: _LoopRef) -> _Entry[T]:
        dropped: list[_Entry[T]] = []
        try:
            with self._lock:
                dropped = self._drop_closed()
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = _Entry(self._factory())
                    if self._aclose is not None:
                        entry.keeper = self._close_at_shutdown(key, entry.value)
                        _step(entry.keeper.asend(None))
            return entry
        finally:  # also when the factory raised: the dropped values are forgotten already
            self._dropped(dropped)

    def _drop_closed(self) -> list[_Entry[T]]:
        """Forget the entries of closed or collected loops (called with the lock held)."""
        gone = [key for key in self._entries if (loop := key()) is None or loop.is_closed()]
        return [self._entries.pop(key) for key in gone]

    def _dropped(self, entries: list[_Entry[T]]) -> None:
        # Outside the lock: on_drop may take its time. A forgotten keeper needs nothing:
        # its loop finalizes it when it is collected, and its finally finds no entry.
        if self._on_drop is not None:
            for entry in entries:
                self._on_drop(entry.value)

    def _forget(self, key: _LoopRef, value: T) -> bool:
        """Forget ``key``'s entry if it still holds ``value``; return whether it did."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.value is not value:
                return False
            del self._entries[key]
            return True

    async def _close_at_shutdown(self, key: _LoopRef, value: T) -> AsyncGenerator[None, None]:
        # The loop tracks every async generator iterated in it and closes the live ones at
        # shutdown_asyncgens(), still running: the one moment a value can be closed on its
        # own loop without the user calling aclose().
        try:
            yield
        finally:
            if self._forget(key, value):
                assert self._aclose is not None
                await self._aclose(value)


def _step(step: Coroutine[Any, Any, None]) -> None:
    """Run one step of a keeper that awaits nothing on the way (start it, or finish it).

    Calling ``asend`` is what registers the generator with the running loop (the loop's
    first-iteration hook); the step itself completes without suspending, so it runs here
    synchronously and :meth:`PerLoop.get` stays a plain function.
    """
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("a PerLoop keeper suspended where it awaits nothing")
