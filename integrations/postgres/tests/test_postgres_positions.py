"""Positions given to add_message(idx=...) and delete_message: list semantics, in every layout."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.core import ChatMessage, ChatStoreError
from llama_index.storage.chat_store.postgres import PostgresChatStore

FAR = 10**30  # beyond a bigint: list.insert clamps it, the server would reject it


@pytest.fixture(params=["native", "google", "llama_index"])
def store(
    request: pytest.FixtureRequest, database_url_for_module: str
) -> Iterator[PostgresChatStore]:
    store = PostgresChatStore.from_uri(
        database_url_for_module, schema_name=f"p_{uuid.uuid4().hex[:8]}", layout=request.param
    )
    store.set_messages("k", [ChatMessage(content="a"), ChatMessage(content="b")])
    yield store
    store.close()


def _texts(store: PostgresChatStore) -> list[str | None]:
    return [m.content for m in store.get_messages("k")]


@pytest.mark.parametrize("bad", ["x", "1", 1.0, b"1", [1]])
def test_an_idx_that_is_not_an_int_is_a_type_error(store: PostgresChatStore, bad: Any) -> None:
    """add_message(idx="x") and delete_message(key, "x") raise TypeError, as a list does.

    If this fails: the value reaches the server and comes back as a generic ChatStoreError.
    """
    message = ChatMessage(content="new")
    for call in (
        lambda: store.add_message("k", message, idx=bad),
        lambda: asyncio.run(store.aadd_message("k", message, idx=bad)),
        lambda: store.delete_message("k", bad),
        lambda: asyncio.run(store.adelete_message("k", bad)),
    ):
        with pytest.raises(TypeError) as info:
            call()
        assert not isinstance(info.value, ChatStoreError)
    assert _texts(store) == ["a", "b"]


def test_positions_beyond_any_length_clamp_like_a_list(store: PostgresChatStore) -> None:
    """Huge positive or negative positions insert at an end or remove nothing.

    If this fails: the position went to the server as a bigint and overflowed.
    """
    store.add_message("k", ChatMessage(content="end"), idx=FAR)
    store.add_message("k", ChatMessage(content="front"), idx=-FAR)
    asyncio.run(store.aadd_message("k", ChatMessage(content="end2"), idx=FAR))
    assert _texts(store) == ["front", "a", "b", "end", "end2"]
    assert store.delete_message("k", FAR) is None
    assert store.delete_message("k", -FAR) is None
    assert asyncio.run(store.adelete_message("k", FAR)) is None
    assert store.delete_oldest_messages("k", FAR) is not None
    assert _texts(store) == []


def test_a_bool_idx_counts_as_an_int(store: PostgresChatStore) -> None:
    """idx=True is 1, as for list.insert."""
    store.add_message("k", ChatMessage(content="one"), idx=True)
    assert _texts(store) == ["a", "one", "b"]


# Planner settings under which ``id IN (SELECT ... LIMIT n FOR UPDATE)`` becomes a
# nested-loop semi-join that runs the subquery again for every candidate row.
_RESCANNING_PLANS = {
    name: "off"
    for name in (
        "enable_hashjoin",
        "enable_mergejoin",
        "enable_material",
        "enable_sort",
        "enable_hashagg",
        "enable_memoize",
    )
}


@pytest.mark.parametrize("layout", ["native", "google", "llama_index"])
def test_delete_oldest_removes_n_whatever_plan_the_server_picks(
    database_url_for_module: str, layout: str
) -> None:
    """delete_oldest_messages(key, 2) removes 2 of 6, also under a rescanning plan.

    If this fails: the statement picks its ids in a subquery the server may run once per
    row it deletes, each run past the rows already deleted: the whole conversation goes.
    """
    options = " ".join(f"-c {name}={value}" for name, value in _RESCANNING_PLANS.items())
    store = PostgresChatStore.from_uri(
        database_url_for_module,
        schema_name=f"o_{uuid.uuid4().hex[:8]}",
        layout=layout,
        engine_options={"connect_args": {"options": options}},
        async_connect_options={"server_settings": _RESCANNING_PLANS},
    )
    six = [ChatMessage(content=f"m{i}") for i in range(6)]
    store.set_messages("k", six)
    assert [m.content for m in store.delete_oldest_messages("k", 2)] == ["m0", "m1"]
    assert store.count_messages("k") == 4
    store.set_messages("k", six)
    removed = asyncio.run(store.adelete_oldest_messages("k", 2))
    assert [m.content for m in removed] == ["m0", "m1"]
    assert _texts(store) == ["m2", "m3", "m4", "m5"]
    store.close()
