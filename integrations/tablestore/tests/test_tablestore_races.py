"""Two store instances doing different things to one conversation at once, in both layouts.

Instance A runs one operation; before its k-th request to Tablestore it stops at a barrier
while instance B, in another thread, runs a whole other operation; then A goes on. Every k
from 0 to A's request count is tried, so each place where B's change can land inside A is
covered, deterministically (the suite's :mod:`~llama_index.storage.chat_store.testing.races`).
The outcome (A's result, B's result, the final conversation) must be one that running A and
B one after the other, in some order, gives on a plain list. A either wrote the conversation
first (and remembers its meta row, which B then makes stale) or has never seen it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.testing.races import (
    GatedClient,
    Op,
    RequestGate,
    delete_all,
    delete_at,
    delete_oldest,
    every_interleaving,
    get,
    insert,
    pop,
    run_round,
    set_to,
    stale_reads,
)

_INITIAL = ["i0", "i1", "i2"]

# Removals at every position kind (last, first, inside, all), appends and inserts, a replace;
# B adds the changes that move each end, renumber, or retire the generation.
_A_CHANGES = [
    delete_at(2), delete_at(0), delete_at(1), pop(), delete_oldest(1), delete_oldest(3),
    delete_all(), insert("A0", None), insert("A0", 0), insert("A0", 1), set_to(["S0"]),
]  # fmt: skip
_B_CHANGES = [
    [insert("B0", None)], [insert("B0", 0)], [pop()], [delete_oldest(1)], [delete_all()],
    [set_to(["T0", "T1"])],
]  # fmt: skip


# Reads of every window kind against changes that move either end, retire the generation,
# or free the last slot and fill it again (a pop, then an append).
_A_READS = [get(), get(offset=-2), get(offset=1, limit=1)]
_B_FOR_READS = [
    [insert("B0", None)], [insert("B0", 0)], [pop()], [delete_oldest(1)], [delete_at(1)],
    [delete_all()], [set_to(["T0", "T1"])], [pop(), insert("B0", None)],
]  # fmt: skip


def _gated(raw_client: Any, table: str, layout: str) -> tuple[TablestoreChatStore, RequestGate]:
    """A new instance whose requests pass a gate (it remembers nothing yet)."""
    gate = RequestGate()
    client = GatedClient(raw_client, gate)
    return TablestoreChatStore(tablestore_client=client, table_name=table, layout=layout), gate


@pytest.fixture(params=["native", "llama_index"])
def layout(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=[True, False], ids=["A saw it", "A new"])
def a_saw_it(request: pytest.FixtureRequest) -> bool:
    """Whether A wrote the conversation first (and remembers its meta row)."""
    return bool(request.param)


def _every_interleaving(
    new_store: Callable[..., Any], raw_client: Any, layout: str, a: Op,
    bs: list[list[Op]], a_saw_it: bool, *, final_too: bool = True,
) -> list[str]:  # fmt: skip
    factory = new_store(layout=layout)
    table = factory().table_name
    return every_interleaving(
        lambda: _gated(raw_client, table, layout), factory(), a, bs,
        initial=_INITIAL, a_writes_initial=a_saw_it, final_too=final_too,
    )  # fmt: skip


@pytest.mark.parametrize("a", _A_CHANGES, ids=lambda c: c.name)
def test_change_with_another_landing_at_every_request(
    new_store: Callable[..., Any], raw_client: Any, layout: str, a: Op, a_saw_it: bool
) -> None:
    """A's operation and B's, at every interleaving, equal A then B or B then A.

    A new instance A per round, which wrote the initial conversation (and remembers that
    conversation's meta row as it plans) or never saw it. If this fails: an operation of A
    re-read the conversation between planning and committing (and acted on a state it did
    not plan against), or committed without a condition on what it read.
    """
    failures = _every_interleaving(new_store, raw_client, layout, a, _B_CHANGES, a_saw_it)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("a", _A_READS, ids=lambda c: c.name)
def test_read_with_another_landing_at_every_request(
    new_store: Callable[..., Any], raw_client: Any, layout: str, a: Op, a_saw_it: bool
) -> None:
    """A read returns the conversation as it was before or after B's change.

    If this fails: a read took its window from one state of the conversation and the rows
    from another (a stale meta row it remembered, or one that moved while it read).
    """
    failures = _every_interleaving(
        new_store, raw_client, layout, a, _B_FOR_READS, a_saw_it, final_too=False
    )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("layout_name", ["native", "llama_index"])
@pytest.mark.parametrize("idx", [None, 3])
def test_delete_at_the_end_while_appending_removes_the_planned_message(
    new_store: Callable[..., Any], raw_client: Any, layout_name: str, idx: int | None
) -> None:
    """``delete_message(key, 2)`` of [i0, i1, i2] returns i2 even when A0 is appended meanwhile.

    If this fails: the delete re-read the conversation after planning (it popped the new
    last message, A0, instead of the one at position 2).
    """
    factory = new_store(layout=layout_name)
    a_store, gate = _gated(raw_client, factory().table_name, layout_name)
    got, _ = run_round(
        a_store, gate, factory(), delete_at(2), [insert("A0", idx)], 1,
        initial=_INITIAL, a_writes_initial=True,
    )  # fmt: skip
    assert got == ("i2", [None], ["i0", "i1", "A0"])


@pytest.mark.parametrize("b", _B_FOR_READS, ids=lambda ops: ", ".join(op.name for op in ops))
def test_a_read_after_another_change_sees_it(
    new_store: Callable[..., Any], layout: str, b: list[Op]
) -> None:
    """A read sees every change finished before it, though the store remembers an older state.

    If this fails: a read trusted the meta row the store remembered (its own last write)
    without checking it against the table, and returned a conversation already changed.
    """
    factory = new_store(layout=layout)
    failures = stale_reads(factory(), factory(), _A_READS, b, initial=_INITIAL)
    assert not failures, "\n".join(failures)
