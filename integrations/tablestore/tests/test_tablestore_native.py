"""The native layout's requests and commit conditions, counted and interleaved on the emulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.core.backend import Change, Plan, drive
from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.tablestore import _native_writes as writes
from llama_index.storage.chat_store.testing.samples import numbered


class _Client:
    """The store's real OTSClient, recording each call and running a hook before call ``at``."""

    def __init__(self, client: Any, at: int = -1, hook: Callable[[], object] = lambda: None):
        self.client, self.at, self.hook = client, at, hook
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if len(self.calls) == self.at:
                self.hook()
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


def _run(store: TablestoreChatStore, op: Plan[Any], client: _Client | None = None) -> Any:
    client = client or _Client(store._sync_client())
    return drive(op, lambda step: store._send(client, step))


def _once() -> Change:
    return Change()


def _pop(store: TablestoreChatStore) -> tuple[str | None, list[str]]:
    client = _Client(store._sync_client())
    popped = _run(store, writes.pop_last(store._tables, "k", _once()), client)
    return (popped.content if popped else None), client.calls


@pytest.fixture
def make_store(new_store: Callable[..., Any]) -> Callable[[], TablestoreChatStore]:
    """Instances over one new native table (each with its own memory)."""
    return new_store(layout="native")  # type: ignore[no-any-return]


def test_pop_reads_meta_and_last_row_in_one_request(
    make_store: Callable[[], TablestoreChatStore],
) -> None:
    """A pop after the store's own write is a BatchGetRow, the commit and the row's delete."""
    store = make_store()
    store.add_messages("k", numbered(3))
    assert _pop(store) == ("m2", ["batch_get_row", "update_row", "batch_write_row"])
    # A new instance remembers nothing: it reads the meta row, then the last row.
    assert _pop(make_store()) == ("m1", ["get_row", "get_range", "update_row", "batch_write_row"])


_CHANGES: dict[str, Callable[[TablestoreChatStore], object]] = {
    "append": lambda other: other.add_message("k", ChatMessage(content="other")),
    "pop": lambda other: other.delete_last_message("k"),
    "replace": lambda other: other.set_messages("k", numbered(3, "r")),
    "delete": lambda other: other.delete_messages("k"),
}


@pytest.mark.parametrize("change", list(_CHANGES))
def test_a_stale_memory_costs_a_pop_nothing(
    make_store: Callable[[], TablestoreChatStore], change: str
) -> None:
    """After another instance changed the conversation, a pop costs what a new instance's does."""
    store, other = make_store(), make_store()
    results = []
    for popper in (store, None):
        store.set_messages("k", numbered(3))
        _CHANGES[change](other)
        popped, calls = _pop(popper or make_store())
        results.append((popped, len(calls)))
    assert results[0][0] == results[1][0]
    assert results[0][1] <= results[1][1]


def test_commit_never_matches_a_recreated_conversation(
    make_store: Callable[[], TablestoreChatStore],
) -> None:
    """A pop whose conversation was emptied and recreated meanwhile (version 1 again) retries.

    The meta row's version starts again at 1 in a recreated conversation; the commit is
    conditional on the generation too, so the pop cannot delete the new conversation's meta
    row and return a message another instance already popped.
    """
    store, other = make_store(), make_store()
    store.add_message("k", ChatMessage(content="old"))

    def recreate() -> None:
        assert _texts([other.delete_last_message("k")]) == ["old"]
        other.add_message("k", ChatMessage(content="new"))

    fresh = make_store()  # reads the meta row, then the row, then commits (call 2)
    client = _Client(fresh._sync_client(), at=2, hook=recreate)
    popped = _run(fresh, writes.pop_last(fresh._tables, "k", _once()), client)
    assert _texts([popped]) == ["new"]
    assert store.get_messages("k") == []


def _texts(messages: list[ChatMessage | None]) -> list[str | None]:
    return [m.content if m else None for m in messages]
