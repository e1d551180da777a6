"""The native layout's catalog beyond the suite: old meta rows, races, paging costs, edges."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from llama_index.storage.chat_store.core import (
    Capability,
    CapabilityNotSupportedError,
    ChatMessage,
    ConversationNotFoundError,
    CorruptDataError,
)
from llama_index.storage.chat_store.core.backend import Change, drive
from llama_index.storage.chat_store.core.catalog import check_metadata
from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.tablestore import _catalog as catalog
from llama_index.storage.chat_store.tablestore._sdk import ts
from llama_index.storage.chat_store.testing.catalog import walk_catalog
from llama_index.storage.chat_store.testing.samples import numbered

_ENTRY = ["created_at", "updated_at", "metadata"]


@pytest.fixture
def make_store(new_store: Callable[..., Any]) -> Callable[[], TablestoreChatStore]:
    """Instances over one new native table (each with its own memory of meta rows)."""
    return new_store(layout="native")  # type: ignore[no-any-return]


def _meta_row(raw_client: Any, store: TablestoreChatStore, key: str) -> dict[str, Any]:
    _, row, _ = raw_client.get_row(f"{store.table_name}_meta", [("session_id", key)])
    return {c[0]: c[1] for c in row.attribute_columns} if row is not None else {}


def _as_old_version(raw_client: Any, store: TablestoreChatStore, key: str) -> None:
    """Make ``key``'s meta row what versions before the catalog wrote: no entry columns."""
    row = ts.Row([("session_id", key)], {"delete_all": _ENTRY})
    raw_client.update_row(f"{store.table_name}_meta", row, ts.Condition("EXPECT_EXIST"))


def test_old_meta_rows_read_without_times_until_written(
    make_store: Callable[[], TablestoreChatStore], raw_client: Any
) -> None:
    """A meta row without entry columns lists with None times and {}; the next change stamps."""
    store = make_store()
    store.add_messages("old", numbered(2))
    _as_old_version(raw_client, store, "old")
    reader = make_store()
    info = reader.get_conversation("old")
    assert info is not None
    assert (info.message_count, info.created_at, info.updated_at, info.metadata) == (
        2, None, None, {},
    )  # fmt: skip
    assert reader.list_conversations().conversations == [info]
    reader.add_message("old", ChatMessage(content="new"))
    info = reader.get_conversation("old")
    assert info is not None
    assert (info.message_count, info.created_at) == (3, None)  # its beginning was never kept
    assert info.updated_at is not None
    assert reader.set_metadata("old", {"title": "t"}).metadata == {"title": "t"}
    reader.delete_messages("old")
    reader.add_message("old", ChatMessage(content="again"))
    again = reader.get_conversation("old")
    assert again is not None
    assert again.created_at is not None
    assert again.metadata == {}


def test_emptying_removes_the_entry_columns(
    make_store: Callable[[], TablestoreChatStore], raw_client: Any
) -> None:
    """An emptied conversation keeps its meta row (the record) but no times or metadata."""
    store = make_store()
    store.add_messages("k", numbered(2))
    store.set_metadata("k", {"title": "t"})
    assert set(_ENTRY) <= set(_meta_row(raw_client, store, "k"))
    store.delete_oldest_messages("k", 2)
    columns = _meta_row(raw_client, store, "k")
    assert columns["head"] == columns["tail"]
    assert not set(_ENTRY) & set(columns)
    with pytest.raises(ConversationNotFoundError):
        store.set_metadata("k", {"title": "t"})


_OTHERS: dict[str, Callable[[TablestoreChatStore], object]] = {
    "append": lambda other: other.add_message("k", ChatMessage(content="other")),
    "merge": lambda other: other.set_metadata("k", {"theirs": 1}),
    "pop": lambda other: other.delete_last_message("k"),
}


def _merge_with(store: TablestoreChatStore, at: int, hook: Callable[[], object]) -> Any:
    """Merge {"mine": 1} into "k", running ``hook`` before request ``at`` of the merge."""
    client, calls = store._sync_client(), []

    def execute(step: Any) -> Any:
        if len(calls) == at:
            hook()
        calls.append(step.method)
        return store._send(client, step)

    plan = catalog.set_metadata(store._tables, "k", check_metadata({"mine": 1}), Change())
    info = drive(plan, execute)
    assert len(calls) == (2 if at == 0 else 5)  # after a conflict: the record, a read, a commit
    return info


@pytest.mark.parametrize("other_change", list(_OTHERS))
def test_set_metadata_lands_between_any_two_requests(
    make_store: Callable[[], TablestoreChatStore], other_change: str
) -> None:
    """Another instance's change before each request of a merge is kept, and so is the merge."""
    for at in range(2):  # before the merge reads the meta row; before it commits
        store, other = make_store(), make_store()
        store.set_messages("k", numbered(2))
        store.set_metadata("k", {"mine": None, "theirs": None})
        info = _merge_with(store, at, functools.partial(_OTHERS[other_change], other))
        assert info is not None
        assert make_store().get_conversation("k") == info
        expected = {"mine": 1, "theirs": 1} if other_change == "merge" else {"mine": 1}
        assert info.metadata == expected
        assert info.message_count == {"append": 3, "merge": 2, "pop": 1}[other_change]


def test_listing_steps_over_emptied_conversations(
    make_store: Callable[[], TablestoreChatStore],
) -> None:
    """Emptied conversations between listed ones still give full pages, and walks end."""
    store = make_store()
    keys = [f"k{i:02d}" for i in range(30)]
    for key in keys:
        store.add_message(key, ChatMessage(content=key))
    for key in keys[:25] + keys[26::2]:
        store.delete_messages(key)
    present = [k for k in keys if k == "k25" or (k > "k25" and int(k[1:]) % 2)]
    assert walk_catalog(store, limit=2) == present
    page = store.list_conversations(after="k25", limit=2)
    assert [c.key for c in page.conversations] == present[1:3]
    # 25 emptied rows ahead of the first present one: a page gives up after a few requests
    # and returns fewer, with a cursor past what it read.
    page = store.list_conversations(limit=1)
    assert page.conversations == []
    assert page.next_after is not None
    assert page.next_after < "k25"
    assert walk_catalog(store, limit=1) == present


def test_a_page_is_one_request(make_store: Callable[[], TablestoreChatStore]) -> None:
    """A page of the catalog is one GetRange, however many conversations follow it."""
    store = make_store()
    for i in range(40):
        store.add_message(f"u/{i:02d}", ChatMessage(content="x"))
    client, calls = store._sync_client(), []

    def execute(step: Any) -> Any:
        calls.append(step.method)
        return store._send(client, step)

    page = drive(catalog.page(store._tables, "u/", "u/09", 5), execute)
    assert [c.key for c in page.conversations] == [f"u/{i}" for i in range(10, 15)]
    assert page.next_after == "u/14"
    assert calls == ["get_range"]


def test_prefixes_end_at_the_last_code_points(
    make_store: Callable[[], TablestoreChatStore],
) -> None:
    """A prefix ending in U+10FFFF or just below the surrogates bounds its range exactly."""
    store = make_store()
    keys = ["a\U0010ffff", "a\U0010ffffz", "b", "\ud7ffx", "\ue000", "\U0010ffff"]
    for key in keys:
        store.add_message(key, ChatMessage(content="x"))
    assert walk_catalog(store, "a\U0010ffff", 2) == ["a\U0010ffff", "a\U0010ffffz"]
    assert walk_catalog(store, "\ud7ff", 2) == ["\ud7ffx"]
    assert walk_catalog(store, "\U0010ffff", 2) == ["\U0010ffff"]
    assert walk_catalog(store, limit=1) == sorted(keys)
    assert store.list_conversations(prefix="a", after="z").conversations == []


def test_damaged_metadata_is_reported_and_deletable(
    make_store: Callable[[], TablestoreChatStore], raw_client: Any
) -> None:
    """Metadata that is not a JSON object raises CorruptDataError naming the key."""
    store = make_store()
    store.add_message("k", ChatMessage(content="x"))
    row = ts.Row([("session_id", "k")], {"put": [("metadata", "[1]")]})
    raw_client.update_row(f"{store.table_name}_meta", row, ts.Condition("EXPECT_EXIST"))
    with pytest.raises(CorruptDataError, match="'k'"):
        store.get_conversation("k")
    with pytest.raises(CorruptDataError, match="'k'"):
        store.list_conversations()
    with pytest.raises(CorruptDataError, match="'k'"):
        store.set_metadata("k", {"title": "t"})
    store.delete_messages("k")
    assert store.list_conversations().conversations == []


def test_catalog_capability_follows_the_layout(new_store: Callable[..., Any]) -> None:
    """layout='auto' reports CATALOG once it has found our table; LlamaIndex's layout never."""
    auto = new_store(layout="auto")()
    assert Capability.CATALOG not in auto.capabilities  # not known before the first call
    assert auto.count_messages("k") == 0
    assert Capability.CATALOG in auto.capabilities
    legacy = new_store(layout="llama_index")()
    assert Capability.CATALOG not in legacy.capabilities
    with pytest.raises(CapabilityNotSupportedError, match="LlamaIndex's layout"):
        legacy.list_conversations()
