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
