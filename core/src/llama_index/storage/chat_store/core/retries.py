"""Retrying calls that failed for want of the server, written once for every backend.

A backend translates its driver's transport failures into :class:`BackendUnavailableError`
(or :class:`NotSentError` when the request provably never left: a refused connection) and
runs each call through :func:`call_with_retries` / :func:`acall_with_retries`. A change is
safe to retry only when it carries an operation id (:func:`new_op_id`, made once per call
and reused by every attempt) that the server records atomically with the change, so a
resent change whose first reply was lost applies nothing twice. When the attempts run
out, the error says what became of a change: nothing applied, or an unknown outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from llama_index.storage.chat_store.core.errors import BackendUnavailableError, NotSentError

__all__ = [
    "RetryPolicy",
    "StepRetries",
    "acall_with_retries",
    "call_with_retries",
    "gave_up",
    "new_op_id",
]

T = TypeVar("T")


def _fresh_prefix() -> None:
    global _op_prefix, _op_count  # per process: a forked child draws its own
    _op_prefix, _op_count = os.urandom(8).hex(), itertools.count()


_op_prefix, _op_count = "", itertools.count()
_fresh_prefix()
os.register_at_fork(after_in_child=_fresh_prefix)


def new_op_id() -> str:
    """Return a fresh operation id: hex text, unique across processes and calls.

    A random prefix per process (a forked child draws its own) and a counter: a syscall
    for every id would cost more than the rest of building a call.
    """
    return f"{_op_prefix}{next(_op_count):x}"


@dataclass(frozen=True)
class RetryPolicy:
    """How a store retries a call that failed for want of the server.

    Attributes:
        retries: Times a failed call is tried again (0: never).
        backoff: Seconds before the first retry, doubling for each next one (jittered:
            each wait is drawn between half and all of its nominal value).
        deadline: Seconds after the first failure past which no retry starts.
    """

    retries: int = 3
    backoff: float = 0.05
    deadline: float = 10.0

    def delays(self, start: float) -> Iterator[float]:
        """Yield the waits before each retry: doubling, jittered, within the deadline."""
        end = start + self.deadline
        for attempt in range(self.retries):
            base = self.backoff * 2**attempt
            delay = base / 2 + random.uniform(0, base / 2)
            if time.monotonic() + delay >= end:
                return
            yield delay


def gave_up(
    failures: list[BackendUnavailableError], spent: float, *, mutates: bool
) -> BackendUnavailableError:
    """The error of a call whose every attempt failed, saying what became of a change."""
    tries = f"{len(failures)} attempt(s) in {spent:.1f} s"
    if not mutates:
        return BackendUnavailableError(f"{failures[-1]} (gave up after {tries})")
    if all(isinstance(exc, NotSentError) for exc in failures):
        return NotSentError(
            f"{failures[-1]} (gave up after {tries}; nothing was applied: no attempt reached "
            "the server)"
        )
    return BackendUnavailableError(
        f"{failures[-1]} (gave up after {tries}; the outcome is unknown: the change was "
        "applied once or not at all, read the conversation to know)"
    )


def call_with_retries(attempt: Callable[[], T], policy: RetryPolicy, *, mutates: bool) -> T:
    """Run ``attempt()``, again after each :class:`BackendUnavailableError` per ``policy``.

    ``mutates``: the call changes data (its attempts must share one operation id); only
    then does the final error speak of what was applied.
    """
    try:
        return attempt()
    except BackendUnavailableError as exc:
        failures = [exc]
    start = time.monotonic()
    for delay in policy.delays(start):
        time.sleep(delay)
        try:
            return attempt()
        except BackendUnavailableError as exc:
            failures.append(exc)
    raise gave_up(failures, time.monotonic() - start, mutates=mutates) from failures[-1]


async def acall_with_retries(
    attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, *, mutates: bool
) -> T:
    """Async :func:`call_with_retries`: ``attempt()`` is awaited, waits are ``asyncio.sleep``."""
    try:
        return await attempt()
    except BackendUnavailableError as exc:
        failures = [exc]
    start = time.monotonic()
    for delay in policy.delays(start):
        await asyncio.sleep(delay)
        try:
            return await attempt()
        except BackendUnavailableError as exc:
            failures.append(exc)
    raise gave_up(failures, time.monotonic() - start, mutates=mutates) from failures[-1]


class _ReachedError(Exception):
    """A request not to be resent failed after it may have reached the server."""

    def __init__(self, error: BackendUnavailableError) -> None:
        super().__init__(str(error))
        self.error = error


class StepRetries:
    """The requests of one call, each tried again on its own per ``policy``.

    For a backend whose every write is idempotent or conditional, so a request can be resent
    alone rather than the whole call run again. ``resent`` tells whether the last request was
    sent again after a failure that may have reached the server: a conditional write that
    then failed its condition may have failed on its own first attempt. A request never sent
    after an earlier request of a change reached the server leaves the change's outcome
    unknown, and its error says so. A request sent with ``resend=False`` (a write whose
    resend could apply it twice) is tried again only while it provably never left; a
    failure that may have reached the server raises at once, with ``resent`` set.
    """

    __slots__ = ("mutates", "policy", "reached", "resent")

    def __init__(self, policy: RetryPolicy, *, mutates: bool) -> None:
        self.policy = policy
        self.mutates = mutates
        self.reached = False  # a request of this call may have reached the server
        self.resent = False

    def _note(self, exc: BackendUnavailableError) -> None:
        self.resent = self.resent or not isinstance(exc, NotSentError)

    def _failed(self, exc: BaseException) -> NoReturn:
        if isinstance(exc, NotSentError) and self.reached and self.mutates:
            raise BackendUnavailableError(
                f"{exc}; but an earlier request of this change reached the server: the "
                "outcome is unknown (the change was applied once or not at all, read the "
                "conversation to know)"
            ) from exc
        self.reached = self.reached or not isinstance(exc, NotSentError)
        raise exc

    def call(self, request: Callable[[], T], *, resend: bool = True) -> T:
        """Run ``request()``, again after each :class:`BackendUnavailableError` (``resend``).

        ``resend=False``: again only after :class:`NotSentError`.
        """
        self.resent = False

        def attempt() -> T:
            try:
                return request()
            except BackendUnavailableError as exc:
                self._note(exc)
                if not resend and self.resent:
                    raise _ReachedError(exc) from exc
                raise

        try:
            result = call_with_retries(attempt, self.policy, mutates=self.mutates)
        except _ReachedError as reached:
            self._failed(reached.error)
        except BaseException as exc:
            self._failed(exc)
        self.reached = True
        return result

    async def acall(self, request: Callable[[], Awaitable[T]], *, resend: bool = True) -> T:
        """Async :meth:`call`: ``request()`` is awaited."""
        self.resent = False

        async def attempt() -> T:
            try:
                return await request()
            except BackendUnavailableError as exc:
                self._note(exc)
                if not resend and self.resent:
                    raise _ReachedError(exc) from exc
                raise

        try:
            result = await acall_with_retries(attempt, self.policy, mutates=self.mutates)
        except _ReachedError as reached:
            self._failed(reached.error)
        except BaseException as exc:
            self._failed(exc)
        self.reached = True
        return result
