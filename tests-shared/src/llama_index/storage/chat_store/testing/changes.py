"""Every mutating call of a chat store, and what one application of it does.

For fault tests (see :mod:`.faults`): start a conversation at :data:`BEFORE`, cut one
call's connection, then check the conversation is :attr:`Change.after` and the call
returned :attr:`Change.returns`, as after exactly one application.
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

__all__ = ["BEFORE", "CHANGES", "Change", "apply_change", "check_cut_change"]

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


def check_cut_change(
    store: BaseChatStore,
    proxy: FaultProxy,
    change: str,
    kind: FaultKind,
    *,
    asynchronous: bool,
    match: bytes | None = None,
) -> None:
    """Cut ``change``'s request (the first one matching ``match``) and check it applied once.

    The conversation (a fresh key) starts as :data:`BEFORE`; afterwards it must hold what one
    application leaves, and the call must have returned what one application returns.
    """
    key = f"conv-{uuid.uuid4().hex}"
    store.set_messages(key, BEFORE)
    fault = proxy.inject(kind, match=match)
    returned = apply_change(store, change, key, asynchronous=asynchronous)
    assert fault.fired == 1, "the request was never seen: the pattern no longer matches"
    assert store.get_messages(key) == CHANGES[change].after
    assert returned == CHANGES[change].returns
