"""How a change meets other writers: the race it retries, and the record of changes.

A change is planned on the state it read and commits by a conditional write; one that loses
the race to another writer (:class:`ConflictError`) starts over from a fresh read, by
:data:`RACE` (core's one loop for it): :func:`raced` makes a layout's method one attempt.

The record of a conversation's last changes is how a resent change finds its own commit.
Every change carries an operation id (the kit's ``Change.id``, one per call). The write that
commits it also counts it (``seq``) and appends its id to the last :data:`OP_RECORD` ids
(``ops``). A conditional write resent after a lost reply that fails its condition may
have failed on its own first attempt: the record read then says so (its id is there), or
that it was not applied (the record names every change since the state it planned on),
or neither (more changes came in between than the record holds: the outcome is unknown).
Both layouts keep one: the native layout in its meta entity, LlamaIndex's layout on the
conversation's last chat row (see :mod:`._llama_index_layout`).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from llama_index.storage.chat_store.core.backend import Change, Plan
from llama_index.storage.chat_store.core.meta import Race, recorded

__all__ = ["OP_RECORD", "RACE", "Record", "covers", "raced", "resent"]

RACE = Race(cap=0.5)
"""How every change retries after losing a race (core's rule), with pauses up to 0.5 s.

Azure's requests take tens of milliseconds and its partitions throttle a burst of retries:
racing writers spread over half a second, as they did before the shared rule existed.
"""


class _Layout(Protocol):
    @property
    def _storage(self) -> str: ...


L = TypeVar("L", bound=_Layout)
P = ParamSpec("P")
T = TypeVar("T")


def raced(
    attempt: Callable[Concatenate[L, str, P], Plan[T]],
) -> Callable[Concatenate[L, str, P], Plan[T]]:
    """Make a layout's plan of one attempt at a change of a key the whole change.

    A call runs the plan by :data:`RACE`: afresh, after a pause, while it loses.
    """

    @functools.wraps(attempt)
    def run(layout: L, key: str, /, *args: P.args, **kwargs: P.kwargs) -> Plan[T]:
        return RACE.run(key, layout._storage, lambda: attempt(layout, key, *args, **kwargs))

    return run


OP_RECORD = 16
"""How many of a conversation's last changes its record names by operation id."""


def covers(seq: int, ops: tuple[str, ...], planned_seq: int) -> bool:
    """Whether a record (``seq``, ``ops``) names every change counted after ``planned_seq``."""
    return seq - len(ops) <= planned_seq


def resent(change: Change) -> bool:
    """Whether the conflict just thrown into a plan came after its request was resent.

    The kit marks that on the change (``check``): the request's own lost attempt may be what
    it conflicted with, so the record must tell. The mark is cleared for the next request.
    """
    was, change.check = change.check, False
    return was


@dataclass(frozen=True)
class Record:
    """A record kept as one string property: ``"<epoch> <seq> <op> <op> ..."``.

    ``epoch`` names an unbroken chain of records: a writer that finds none to build on
    (data written by LlamaIndex's own store, or an empty conversation) starts a new one,
    and records of different epochs say nothing of each other.
    """

    epoch: str
    seq: int
    ops: tuple[str, ...]

    @classmethod
    def new(cls) -> Record:
        """Start a new chain."""
        return cls(secrets.token_hex(4), 0, ())

    @classmethod
    def parse(cls, text: object) -> Record | None:
        """Read a stored record; None when there is none (or it is not one of ours)."""
        if not isinstance(text, str):
            return None
        epoch, _, rest = text.partition(" ")
        seq, _, ops = rest.partition(" ")
        if not (epoch and seq.isdigit()):
            return None
        return cls(epoch, int(seq), tuple(ops.split()))

    def encode(self) -> str:
        return " ".join((self.epoch, str(self.seq), *self.ops))

    def add(self, op: str) -> Record:
        """The record after change ``op`` committed on this one."""
        return Record(self.epoch, self.seq + 1, recorded(self.ops, op, OP_RECORD))

    def knows_since(self, planned: Record) -> bool:
        """Whether this record names every change committed after ``planned``."""
        return self.epoch == planned.epoch and covers(self.seq, self.ops, planned.seq)
