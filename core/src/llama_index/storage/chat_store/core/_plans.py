"""Plans and their drivers: the part of the backend kit that runs one operation.

Public through :mod:`llama_index.storage.chat_store.core.backend` (see its docstring).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from llama_index.storage.chat_store.core.retries import new_op_id

__all__ = ["Change", "ConflictError", "Plan", "Sleep", "adrive", "drive"]

T = TypeVar("T")

Plan = Generator[Any, Any, T]
"""An operation: yields steps, receives their results, returns the operation's answer."""


class Sleep:
    """A step every driver performs itself: wait ``seconds`` (backoff inside a plan)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"Sleep({self.seconds!r})"


class ConflictError(Exception):
    """A conditional step found the data not as it expected (thrown into the plan)."""


class Change:
    """One call that changes a conversation, across the attempts that run it.

    ``id`` (:func:`new_op_id`) is the same for every attempt: a backend writes it atomically
    with the change, so an attempt can tell whether an earlier one was applied. ``check``
    is true once an earlier attempt may have reached the server (it failed in any way but
    :class:`NotSentError`): only then need a plan look for ``id`` before changing anything.
    A plan that itself finds it must look (its own conditional write failed after the
    driver resent it) may set ``check``. ``state`` is the plans' own: whatever a backend
    keeps across the attempts of this change, in this process (``None`` at first), e.g.
    what a commit that may have landed would have returned, or work already done.
    """

    __slots__ = ("attempts", "check", "id", "state")

    def __init__(self, op_id: str | None = None) -> None:
        self.id = new_op_id() if op_id is None else op_id
        self.attempts = 0
        self.check = False
        self.state: Any = None

    def __repr__(self) -> str:
        return f"Change(id={self.id!r}, attempts={self.attempts}, check={self.check})"


def drive(plan: Plan[T], execute: Callable[[Any], Any]) -> T:
    """Run ``plan`` to its answer, sending each step to ``execute``.

    :class:`Sleep` steps sleep here. :class:`ConflictError` from ``execute`` is thrown into
    the plan; any other error closes the plan and propagates.
    """
    result: Any = None
    error: ConflictError | None = None
    while True:
        try:
            step = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result = error = None
        if type(step) is Sleep:
            time.sleep(step.seconds)
            continue
        try:
            result = execute(step)
        except ConflictError as exc:
            error = exc
        except BaseException:
            plan.close()
            raise


async def adrive(plan: Plan[T], execute: Callable[[Any], Awaitable[Any]]) -> T:
    """Async :func:`drive`: ``execute(step)`` is awaited, :class:`Sleep` is ``asyncio.sleep``."""
    result: Any = None
    error: ConflictError | None = None
    while True:
        try:
            step = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result = error = None
        if type(step) is Sleep:
            await asyncio.sleep(step.seconds)
            continue
        try:
            result = await execute(step)
        except ConflictError as exc:
            error = exc
        except BaseException:
            plan.close()
            raise
