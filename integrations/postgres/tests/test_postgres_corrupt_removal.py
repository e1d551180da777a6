"""A removal that takes an unreadable message: it is removed, then CorruptDataError says so."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from llama_index.storage.chat_store.core import ChatMessage, CorruptDataError
from llama_index.storage.chat_store.postgres import PostgresChatStore

NOT_A_MESSAGE = '{"role": "user", "blocks": 42}'
BAD = "corrupt"  # the text of the message that is made unreadable


@pytest.fixture(params=["native", "google", "llama_index"])
def store(
    request: pytest.FixtureRequest, database_url_for_module: str
) -> Iterator[PostgresChatStore]:
    store = PostgresChatStore.from_uri(
        database_url_for_module, schema_name=f"c_{uuid.uuid4().hex[:8]}", layout=request.param
    )
    yield store
    store.close()


def _corrupt(store: PostgresChatStore, url: str, key: str, texts: list[str]) -> None:
    """Store ``texts`` under ``key``, then make every message whose text is ``BAD`` unreadable."""
    store.set_messages(key, [ChatMessage(content=t) for t in texts])
    table = f'"{store.schema_name}".chatstore'
    with psycopg.connect(url, autocommit=True) as raw:
        for position, text in enumerate(texts):
            if text != BAD:
                continue
            if store.layout == "llama_index":
                raw.execute(
                    f"UPDATE {table} SET value[%s] = %s::json WHERE key = %s",
                    (position + 1, NOT_A_MESSAGE, key),
                )
            else:
                raw.execute(
                    f"UPDATE {table} SET message = %s::json WHERE id = (SELECT id FROM {table} "
                    "WHERE key = %s ORDER BY id OFFSET %s LIMIT 1)",
                    (NOT_A_MESSAGE, key, position),
                )


Removal = Callable[[PostgresChatStore, str, str], Any]


def _run(api: str, sync: Callable[[], Any], async_: Callable[[], Any]) -> Any:
    return asyncio.run(async_()) if api == "async" else sync()


# (conversation, removal, first unreadable position it removes, what is left)
CASES: dict[str, tuple[list[str], Removal, int, list[str]]] = {
    "delete_messages": (
        ["m0", BAD, "m2", BAD],
        lambda s, k, api: _run(api, lambda: s.delete_messages(k), lambda: s.adelete_messages(k)),
        1,
        [],
    ),
    "delete_oldest": (
        ["m0", "m1", BAD, BAD, "m4"],
        lambda s, k, api: _run(
            api,
            lambda: s.delete_oldest_messages(k, 4),
            lambda: s.adelete_oldest_messages(k, 4),
        ),
        2,
        ["m4"],
    ),
    "delete_message": (
        ["m0", "m1", BAD, "m3"],
        lambda s, k, api: _run(
            api, lambda: s.delete_message(k, 2), lambda: s.adelete_message(k, 2)
        ),
        2,
        ["m0", "m1", "m3"],
    ),
    "delete_message_from_end": (
        ["m0", BAD, "m2", "m3"],
        lambda s, k, api: _run(
            api, lambda: s.delete_message(k, -3), lambda: s.adelete_message(k, -3)
        ),
        1,
        ["m0", "m2", "m3"],
    ),
    "delete_last_message": (
        ["m0", "m1", BAD],
        lambda s, k, api: _run(
            api, lambda: s.delete_last_message(k), lambda: s.adelete_last_message(k)
        ),
        2,
        ["m0", "m1"],
    ),
}


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_removal_of_unreadable_data_removes_it_then_says_so(
    store: PostgresChatStore, database_url_for_module: str, case: str, api: str
) -> None:
    """The removal is done; CorruptDataError names the key, the position from the start
    of the conversation as it was, says the data was removed and carries it.

    If this fails: the position is counted in what is left after the removal (the rows
    before it are gone too: 0 instead of the real position), or the error does not say
    that the data was removed (a caller would retry the removal or think nothing changed).
    """
    texts, remove, position, left = CASES[case]
    key = f"k-{uuid.uuid4().hex[:8]}"
    _corrupt(store, database_url_for_module, key, texts)
    with pytest.raises(CorruptDataError) as info:
        remove(store, key, api)
    assert (info.value.key, info.value.position) == (key, position)
    assert info.value.data is not None
    assert "blocks" in str(info.value.data)
    assert "removed" in str(info.value)
    assert [m.content for m in store.get_messages(key)] == left
    assert store.count_messages(key) == len(left)
