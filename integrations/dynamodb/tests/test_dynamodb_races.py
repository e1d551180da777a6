"""Two store instances on one conversation, one landing inside the other, in both layouts.

Instance A runs one call; before its k-th request to DynamoDB it stops while instance B, in
another thread, runs its whole operation (or several); then A goes on. Every k from 0 to A's
request count is tried, so each place where B's change can land inside A is covered,
deterministically (the suite's :mod:`~llama_index.storage.chat_store.testing.races`). A's
result must be one that a plain list gives when A runs before, between or after B's
operations, and for two changes the final conversation must match that order. Each case
runs twice: with A new to the conversation, and with A having read it before B's changes
(A then plans and batches on what it remembers, which B may have made stale).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import botocore.session
import pytest

from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore
from llama_index.storage.chat_store.testing.races import (
    Op,
    RequestGate,
    count,
    delete_all,
    delete_at,
    delete_oldest,
    every_interleaving,
    get,
    insert,
    pop,
    set_to,
    stale_reads,
)

# Reads of every window kind against B's changes that move either end, renumber the head or
# the tail (inserts and deletes inside), retire the generation, or reuse a position (a pop,
# then an append at the same place).
_READS = [get(), get(offset=-2), get(offset=1, limit=2), count()]
_READ_B = [
    [insert("B0", -1)], [insert("B0", 1)], [insert("B0", 0)], [insert("B0", None)],
    [delete_at(1)], [delete_at(3)], [delete_at(0)], [pop()], [delete_oldest(2)],
    [set_to(["T0", "T1"])], [delete_all()], [pop(), insert("B0", None)],
    [delete_at(3), insert("B0", None)],
]  # fmt: skip
# Removals (each reads what it removes) and inserts against the renumbering changes, and
# against a conversation deleted and written anew (its meta item starts over).
_CHANGES = [
    delete_at(1), delete_at(3), delete_at(0), delete_at(-1), pop(), delete_oldest(2),
    delete_all(), insert("A0", 1), insert("A0", -1), insert("A0", None),
]  # fmt: skip
_CHANGE_B = [
    [insert("B0", -1)], [insert("B0", 1)], [delete_at(1)], [delete_at(3)], [pop()],
    [insert("B0", None)], [delete_all(), set_to(["T0", "T1", "T2", "T3", "T4"])],
]  # fmt: skip


@pytest.fixture(params=[False, True], ids=["A new", "A saw it"])
def a_saw_it(request: pytest.FixtureRequest) -> bool:
    """Whether A reads the conversation before B's changes (and remembers what it saw)."""
    return bool(request.param)


@pytest.fixture(params=["native", "llama_index"])
def stores(moto: Any, request: pytest.FixtureRequest, a_saw_it: bool) -> Iterator[tuple[Any, ...]]:
    """(A's store, the gate of its requests, B's store, whether A saw it) on a fresh table."""
    layout = request.param
    table = moto.store(layout).table_name
    gate = RequestGate()
    session = botocore.session.Session()
    session.register("before-call.dynamodb", lambda **_: gate.before_request())
    a_store = DynamoDBChatStore(
        table_name=table, layout=layout, botocore_session=session,
        endpoint_url=moto.url, **moto.credentials,
    )  # fmt: skip
    b_store = DynamoDBChatStore(
        table_name=table, layout=layout, endpoint_url=moto.url, **moto.credentials
    )
    a_store.count_messages("warm-up")  # client creation is not one of A's requests
    yield a_store, gate, b_store, a_saw_it
    a_store.close()
    b_store.close()


@pytest.mark.parametrize("a", _READS, ids=lambda op: op.name)
def test_a_read_sees_one_state_whatever_lands_inside_it(stores: tuple[Any, ...], a: Op) -> None:
    """A read returns the conversation as it was before, between or after B's changes.

    If this fails: a read took its range from one state of the conversation and the items
    from another (an insert or delete inside renumbered, or a pop and an append reused, the
    positions it read), returning a list that never existed.
    """
    a_store, gate, b_store, saw = stores
    failures = every_interleaving(
        lambda: (a_store, gate), b_store, a, _READ_B, final_too=False, a_reads_first=saw
    )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("a", _CHANGES, ids=lambda op: op.name)
def test_a_change_acts_on_one_state_whatever_lands_inside_it(
    stores: tuple[Any, ...], a: Op
) -> None:
    """A removal or insert and B's change, at every interleaving, equal one order of the two.

    If this fails: a removal read what it removes from a state that was renumbered meanwhile
    and committed or returned it anyway.
    """
    a_store, gate, b_store, saw = stores
    failures = every_interleaving(lambda: (a_store, gate), b_store, a, _CHANGE_B, a_reads_first=saw)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("layout", ["native", "llama_index"])
@pytest.mark.parametrize("b", _READ_B, ids=lambda ops: ", ".join(op.name for op in ops))
def test_a_read_after_another_change_sees_it(moto: Any, layout: str, b: Sequence[Op]) -> None:
    """A read sees every change finished before it, though A remembers an older state.

    If this fails: a read trusted the meta item the store remembered without checking it
    against the table, and returned a conversation already changed.
    """
    a_store = moto.store(layout)
    failures = stale_reads(a_store, moto.factory(a_store)(), _READS, b)
    assert not failures, "\n".join(failures)
