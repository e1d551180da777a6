"""The steps of the Postgres store's plans, and how each runs on either driver.

A plan (see the kit, ``core.backend``) yields three kinds of steps: :class:`Fetch` (one
statement), :class:`FetchMany` (one statement per parameter set, in one transaction and
round trip) and :class:`Transaction` (a plan of :class:`Fetch` steps, run on one connection
in one transaction). The store's executors send a step to the sync connections or to the
async ones with ``step.run(connections)`` (awaiting what the async ones return); nothing
else differs between them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar, overload

from sqlalchemy import TextClause

from llama_index.storage.chat_store.core.backend import Plan, Sleep, adrive, drive
from llama_index.storage.chat_store.postgres._drivers import (
    ATTEMPTS,
    CONFLICT_STATES,
    AsyncConnections,
    Params,
    RefusedError,
    Row,
    SyncConnections,
)

__all__ = ["Fetch", "FetchMany", "Step", "Transaction", "run"]

T = TypeVar("T")


class Fetch(NamedTuple):
    """A step: run one statement (autocommit, or in the transaction running the plan)."""

    clause: TextClause
    params: Params

    def run(self, connections: Any) -> Any:
        """Send it on ``connections`` (a driver's connections, or a transaction's runner)."""
        return connections.fetch(self.clause, self.params)


class FetchMany(NamedTuple):
    """A step: run ``clause`` once per parameter set in ``runs``, in one transaction."""

    clause: TextClause
    runs: Sequence[Params]

    def run(self, connections: SyncConnections | AsyncConnections) -> Any:
        """Send it on the sync connections (rows) or the async ones (an awaitable)."""
        return connections.fetch_many(self.clause, self.runs)


class Transaction(Generic[T]):
    """A step: a plan of :class:`Fetch` steps, run in one transaction on one connection.

    ``body`` makes the plan (a new one each time the step is sent); its answer is the step's.
    """

    __slots__ = ("body",)

    def __init__(self, body: Callable[[], Plan[T]]) -> None:
        self.body = body

    def run(self, connections: SyncConnections | AsyncConnections) -> Any:
        """Run the body on a sync connection (its answer) or an async one (an awaitable)."""
        if isinstance(connections, AsyncConnections):
            return connections.transaction(lambda tx: adrive(self.body(), lambda s: s.run(tx)))
        return connections.transaction(lambda tx: drive(self.body(), lambda s: s.run(tx)))


Step = Fetch | FetchMany | Transaction[Any]


@overload
def run(step: Fetch | FetchMany) -> Plan[list[Row]]: ...
@overload
def run(step: Transaction[T]) -> Plan[T]: ...
def run(step: Step) -> Plan[Any]:
    """Send ``step``; again after a short random pause when the server rolled it back.

    A deadlock or serialization failure changed nothing, so the step is sent again (up to
    :data:`ATTEMPTS` times in all); other refusals go to the calling plan.
    """
    for tries in range(1, ATTEMPTS + 1):
        try:
            return (yield step)
        except RefusedError as refused:
            if tries == ATTEMPTS or refused.state not in CONFLICT_STATES:
                raise
        yield Sleep(random.uniform(0, 0.005 * 2**tries))  # random: rivals drift apart
    raise AssertionError("unreachable")
