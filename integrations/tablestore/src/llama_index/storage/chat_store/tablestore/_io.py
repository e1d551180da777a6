"""Each store operation written once, run by a sync or an async driver.

An operation is a generator that yields the SDK calls it needs (:class:`Call`) and pauses
(:class:`Sleep`), and receives each call's result. The sync driver runs it on ``OTSClient``,
the async driver on ``AsyncOTSClient``: the two clients share method names and arguments, so
the multi-step protocols (conditional writes, retries, clean-up) exist once. A failed
condition is thrown into the operation as :class:`ConflictError`; every other driver error leaves
through the driver, translated into our error hierarchy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from llama_index.storage.chat_store.core import ChatStoreError
from llama_index.storage.chat_store.tablestore._sdk import CONDITION_FAILED, ts

__all__ = ["Call", "ConflictError", "Once", "Op", "Sleep", "run_async", "run_sync"]

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One SDK call: ``client.<method>(*args, **kwargs)``."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sleep:
    """A pause (backoff between attempts)."""

    seconds: float


class ConflictError(Exception):
    """A conditional write found the row or column not as expected."""


@dataclass
class Once:
    """One store call that changes a conversation, across the attempts that run it.

    ``id`` (from core's ``new_op_id``) is written with the change's commit, in the same
    conditional write, together with what a removal removed; ``check`` says whether the
    change may have been committed already (an attempt after a transport failure, or
    after one of its own commits failed its condition): then the operation first looks for
    ``id`` in the conversation's record and, when it is there, returns what was recorded.
    """

    id: str
    attempts: int = 0
    check: bool = False

    def next_attempt(self) -> Once:
        """Start an attempt: every one after the first checks the record first."""
        self.attempts += 1
        self.check = self.attempts > 1
        return self


Step = Union[Call, Sleep]  # noqa: UP007 (a runtime alias on 3.10)
Op = Generator[Step, Any, T]
Translate = Callable[[BaseException], "ChatStoreError | None"]


def _outcome(exc: Exception, op: Op[Any], translate: Translate) -> ConflictError:
    """Return the ConflictError to throw into ``op``; raise anything else as our error."""
    if isinstance(exc, ts.OTSServiceError) and exc.get_error_code() == CONDITION_FAILED:
        return ConflictError(str(exc))
    op.close()
    ours = translate(exc)
    if ours is None:
        raise exc
    raise ours from exc


def run_sync(client: Any, op: Op[T], translate: Translate) -> T:
    """Run an operation on ``OTSClient``."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = op.send(result) if error is None else op.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result, error = None, None
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            continue
        try:
            result = getattr(client, step.method)(*step.args, **step.kwargs)
        except Exception as exc:
            error = _outcome(exc, op, translate)


async def run_async(client: Any, op: Op[T], translate: Translate) -> T:
    """Run an operation on ``AsyncOTSClient``."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = op.send(result) if error is None else op.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result, error = None, None
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            continue
        try:
            result = await getattr(client, step.method)(*step.args, **step.kwargs)
        except Exception as exc:
            error = _outcome(exc, op, translate)
