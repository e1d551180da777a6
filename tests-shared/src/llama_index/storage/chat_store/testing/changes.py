"""Every mutating call of a chat store, and what one application of it does.

For fault tests (see :mod:`.faults`): start a conversation at :data:`BEFORE`, cut one
request of a call, then check the conversation is :attr:`Change.after` and the call
returned :attr:`Change.returns`, as after exactly one application
(:func:`check_every_cut` does it for each request of the call in turn).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.testing.faults import FaultKind, FaultProxy
from llama_index.storage.chat_store.testing.samples import numbered

__all__ = [
    "BEFORE",
    "CHANGES",
    "MAX_REQUESTS",
    "Change",
    "apply_change",
    "check_every_cut",
]

BEFORE = numbered(5)
"""The conversation before each change."""
_NEW = numbered(2, prefix="new")


@dataclass(frozen=True)
class Change:
    """One mutating call, sync and async, and its effect on :data:`BEFORE`."""

    sync: Callable[[BaseChatStore, str], Any]
    asynchronous: Callable[[BaseChatStore, str], Awaitable[Any]]
    after: list[ChatMessage]
    returns: Any


CHANGES: dict[str, Change] = {
    "add_message": Change(
        lambda s, k: s.add_message(k, _NEW[0]),
        lambda s, k: s.aadd_message(k, _NEW[0]),
        [*BEFORE, _NEW[0]],
        None,
    ),
    "add_messages": Change(
        lambda s, k: s.add_messages(k, _NEW),
        lambda s, k: s.aadd_messages(k, _NEW),
        [*BEFORE, *_NEW],
        None,
    ),
    "insert": Change(
        lambda s, k: s.add_message(k, _NEW[0], idx=2),
        lambda s, k: s.aadd_message(k, _NEW[0], idx=2),
        [*BEFORE[:2], _NEW[0], *BEFORE[2:]],
        None,
    ),
    "set_messages": Change(
        lambda s, k: s.set_messages(k, _NEW),
        lambda s, k: s.aset_messages(k, _NEW),
        _NEW,
        None,
    ),
    "delete_message": Change(
        lambda s, k: s.delete_message(k, 1),
        lambda s, k: s.adelete_message(k, 1),
        [BEFORE[0], *BEFORE[2:]],
        BEFORE[1],
    ),
    "delete_last_message": Change(
        lambda s, k: s.delete_last_message(k),
        lambda s, k: s.adelete_last_message(k),
        BEFORE[:-1],
        BEFORE[-1],
    ),
    "delete_oldest_messages": Change(
        lambda s, k: s.delete_oldest_messages(k, 2),
        lambda s, k: s.adelete_oldest_messages(k, 2),
        BEFORE[2:],
        BEFORE[:2],
    ),
    "delete_messages": Change(
        lambda s, k: s.delete_messages(k),
        lambda s, k: s.adelete_messages(k),
        [],
        BEFORE,
    ),
}
"""Every mutating call by name: append, batch append, insert, set, delete at an index,
pop, delete oldest, delete all."""


def apply_change(store: BaseChatStore, name: str, key: str, *, asynchronous: bool) -> Any:
    """Run change ``name`` on ``key``; the async twin in a fresh event loop, then ``aclose``."""
    change = CHANGES[name]
    if not asynchronous:
        return change.sync(store, key)

    async def run() -> Any:
        try:
            return await change.asynchronous(store, key)
        finally:
            await store.aclose()

    return asyncio.run(run())


MAX_REQUESTS = 16
"""The most requests one change may make for :func:`check_every_cut`."""

STALL_SECONDS = 0.05
"""How long a ``STALL`` holds the request it hits."""


def check_every_cut(
    store: BaseChatStore,
    proxied: BaseChatStore,
    proxy: FaultProxy,
    change: str,
    kind: FaultKind,
    *,
    asynchronous: bool,
) -> int:
    """Cut each request of ``change`` in turn and check every run applied the change once.

    Run ``n`` starts a fresh key at :data:`BEFORE` (through ``store``, which talks to the
    server directly), makes the change through ``proxied`` (the same storage, through
    ``proxy``) with its n-th request cut by ``kind``, and checks through ``store`` that the
    conversation is what one application leaves and the call returned what one application
    returns: with one fault the store's own retries must hide it. Runs stop at the first
    ``n`` the change no longer reaches (requests made while reconnecting count too).

    Returns:
        How many requests were cut, one per run.
    """
    expected = CHANGES[change]
    for nth in range(1, MAX_REQUESTS + 1):
        key = f"cut-{uuid.uuid4().hex}"
        store.set_messages(key, BEFORE)
        fault = proxy.inject(kind, nth=nth, seconds=STALL_SECONDS)
        try:
            returned = apply_change(proxied, change, key, asynchronous=asynchronous)
        except Exception as exc:
            raise AssertionError(
                f"{change} with its request {nth} cut ({kind.name}) raised "
                f"{type(exc).__name__}: {exc}; with one fault the store's retries must succeed"
            ) from exc
        finally:
            proxy.clear()
        try:
            if not fault.fired:
                return nth - 1
            held = store.get_messages(key)
            assert held == expected.after, (
                f"{change} with its request {nth} cut ({kind.name}) left "
                f"{[m.content for m in held]}, not {[m.content for m in expected.after]}"
            )
            assert returned == expected.returns, (
                f"{change} with its request {nth} cut ({kind.name}) returned {returned!r}, "
                f"not {expected.returns!r}"
            )
        finally:
            store.delete_messages(key)
    raise AssertionError(f"{change} made more than {MAX_REQUESTS} requests")
