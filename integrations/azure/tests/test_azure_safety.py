"""AzureChatStore data safety: removals racing appends, corrupt conversations, awkward keys.

Races are made deterministic by pausing one instance's plan between two of its requests
(after its reads, before its write) and running the other instance's call right there;
free-running rounds with a barrier back them up. Everything runs on a real Azurite.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.data.tables import EdmType, EntityProperty, TableClient, UpdateMode

from llama_index.storage.chat_store.azure import AzureChatStore
from llama_index.storage.chat_store.azure._codec import decode_key, encode_key
from llama_index.storage.chat_store.azure.testing import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_connection_string,
)
from llama_index.storage.chat_store.core import ChatMessage, CorruptDataError
from llama_index.storage.chat_store.core.backend import Change, ConflictError, Plan, Sleep, drive
from llama_index.storage.chat_store.testing.samples import numbered

KEY = "conv"
REMOVED = "removed from Azure table"
LAYOUTS = ["native", "llama_index"]


@pytest.fixture
def table(azurite_table_endpoint: str) -> Iterator[str]:
    name = f"Z{uuid.uuid4().hex[:16]}"
    yield name
    for suffix in ("", "Meta"):
        client = TableClient.from_connection_string(
            azurite_connection_string(azurite_table_endpoint), name + suffix
        )
        with client:
            client.delete_table()


@pytest.fixture
def make_store(azurite_table_endpoint: str, table: str) -> Iterator[Callable[..., AzureChatStore]]:
    """New instances over one table, each with its own memory of meta entities."""
    made: list[AzureChatStore] = []

    def make(layout: str = "native") -> AzureChatStore:
        made.append(AzureChatStore.from_account_and_key(
            AZURITE_ACCOUNT, AZURITE_KEY, endpoint=azurite_table_endpoint,
            chat_table_name=table, metadata_table_name=table + "Meta", layout=layout,
        ))  # fmt: skip
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def raw(azurite_table_endpoint: str, table: str) -> Iterator[TableClient]:
    """The store's table, written directly (to corrupt it)."""
    client = TableClient.from_connection_string(
        azurite_connection_string(azurite_table_endpoint), table
    )
    with client:
        yield client


def run(
    store: AzureChatStore,
    plan: Plan[Any],
    *,
    pause_before: int | None = None,
    meanwhile: Callable[[], object] | None = None,
    max_requests: int | None = None,
) -> Any:
    """Run a store plan; ``meanwhile()`` runs just before its ``pause_before``-th request.

    A plan that finishes with fewer requests runs ``meanwhile()`` after it (a sequential
    round, so every round checks something). ``max_requests`` fails the test as soon as
    the plan sends more (a plan that spins on an inconsistency it should report), instead
    of waiting for it to give up.
    """
    sent = 0
    paused = False

    def paced() -> Plan[Any]:
        nonlocal sent, paused
        result: Any = None
        error: ConflictError | None = None
        while True:
            try:
                op = plan.throw(error) if error is not None else plan.send(result)
            except StopIteration as stop:
                return stop.value
            error = None
            if not isinstance(op, Sleep):
                sent += 1
                if sent == pause_before and meanwhile is not None:
                    paused = True
                    meanwhile()
                if max_requests is not None and sent > max_requests:
                    pytest.fail(f"the call sent more than {max_requests} requests: it spins")
            try:
                result = yield op
            except ConflictError as exc:
                error = exc

    result = drive(paced(), store._execute)
    if meanwhile is not None and not paused:
        meanwhile()
    return result


def _texts(messages: Any) -> list[str]:
    if messages is None:
        return []
    if isinstance(messages, ChatMessage):
        messages = [messages]
    return [m.content or "" for m in messages]


# -- item 9: a removal that empties the conversation vs an append ---------------------------

_REMOVALS: dict[str, Callable[[AzureChatStore], Plan[Any]]] = {
    "pop": lambda s: s._pop_plan(KEY, Change()),
    "delete_oldest_all": lambda s: s._oldest_plan(KEY, 1, Change()),
    "delete_at_0": lambda s: s._delete_at_plan(KEY, 0, Change()),
    "delete_at_-1": lambda s: s._delete_at_plan(KEY, -1, Change()),
}


def _check_outcome(store: AzureChatStore, removal: str, returned: list[str]) -> None:
    """Some order of the append and the removal explains the result; nothing lost."""
    final = _texts(store.get_messages(KEY))
    assert sorted(returned + final) == ["A1", "i0"], (returned, final)
    if removal in ("pop", "delete_at_-1"):
        assert (returned, final) in ((["i0"], ["A1"]), (["A1"], ["i0"]))
    else:  # the first message, whichever order: i0
        assert (returned, final) == (["i0"], ["A1"])
    assert store.count_messages(KEY) == len(final)
    assert store.get_keys() == ([KEY] if final else [])


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
@pytest.mark.parametrize("removal", list(_REMOVALS))
def test_emptying_removal_racing_an_append_loses_nothing(
    make_store: Callable[..., AzureChatStore], removal: str, warm: bool
) -> None:
    """A removal that would empty [i0] never takes an append made after its read with it.

    The append runs between each pair of the removal's requests in turn (one round per
    gap). If this fails: a removal re-reads the conversation and deletes what is there by
    then (delete_all) instead of acting on the meta entity it planned on.
    """
    remover, appender, checker = make_store(), make_store(), make_store()
    for gap in range(2, 7):
        checker.set_messages(KEY, [ChatMessage(content="i0")])
        if warm:  # a remembered meta entity: the pop's one-query path
            remover.count_messages(KEY)
        returned = run(
            remover,
            _REMOVALS[removal](remover),
            pause_before=gap,
            meanwhile=lambda: appender.add_message(KEY, ChatMessage(content="A1")),
        )
        _check_outcome(checker, removal, _texts(returned))
        checker.delete_messages(KEY)


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
@pytest.mark.parametrize("removal", list(_REMOVALS))
def test_append_paused_while_a_removal_empties_the_conversation(
    make_store: Callable[..., AzureChatStore], removal: str, warm: bool
) -> None:
    """An append planned on [i0] and held while another instance empties it still lands.

    If this fails: the append's retry after the emptied (and deleted) meta entity does
    not list the key again, or overwrites the removal.
    """
    remover, checker = make_store(), make_store()
    returned: list[Any] = []
    for gap in range(1, 4):
        checker.set_messages(KEY, [ChatMessage(content="i0")])
        appender = make_store()
        if warm:  # a remembered meta entity: the append is one transaction, unread
            appender.count_messages(KEY)
        returned.clear()
        run(
            appender,
            appender._add_plan(KEY, [ChatMessage(content="A1")], None, Change()),
            pause_before=gap,
            meanwhile=lambda: returned.append(run(remover, _REMOVALS[removal](remover))),
        )
        _check_outcome(checker, removal, _texts(returned[0]) if returned else [])
        checker.delete_messages(KEY)


_FIRST_WRITES: dict[str, Callable[[AzureChatStore], Plan[Any]]] = {
    "append": lambda s: s._add_plan(KEY, [ChatMessage(content="A1")], None, Change()),
    "insert": lambda s: s._add_plan(KEY, [ChatMessage(content="A1")], 0, Change()),
    "replace": lambda s: s._set_plan(KEY, [ChatMessage(content="A1")], Change()),
}


@pytest.mark.parametrize("write", list(_FIRST_WRITES))
def test_first_write_held_while_the_conversation_comes_and_goes_stays_listed(
    make_store: Callable[..., AzureChatStore], write: str
) -> None:
    """A first write planned on no conversation, held while another instance creates and
    empties one, lands and is listed by get_keys.

    The emptying removes the listing and the meta entity, so the held write's create
    succeeds with the listing it wrote before gone. If this fails: the key is not listed
    again after a commit that created the meta entity.
    """
    other, checker = make_store(), make_store()
    for gap in range(1, 4):
        writer = make_store()
        run(
            writer,
            _FIRST_WRITES[write](writer),
            pause_before=gap,
            meanwhile=lambda: (
                other.add_message(KEY, ChatMessage(content="x")),
                other.delete_last_message(KEY),
            ),
        )
        assert _texts(checker.get_messages(KEY)) == ["A1"], gap
        assert checker.get_keys() == [KEY], gap
        checker.delete_messages(KEY)


@pytest.mark.parametrize("removal", list(_REMOVALS))
def test_emptying_removal_and_append_at_once(
    make_store: Callable[..., AzureChatStore], removal: str
) -> None:
    """Two instances, released together by a barrier, for 12 rounds: nothing lost.

    If this fails: see test_emptying_removal_racing_an_append_loses_nothing (the same
    race, left to the scheduler).
    """
    remover, appender, checker = make_store(), make_store(), make_store()
    barrier = threading.Barrier(2)
    returned: list[Any] = []

    def remove() -> None:
        barrier.wait()
        returned.append(run(remover, _REMOVALS[removal](remover)))

    for _ in range(12):
        checker.set_messages(KEY, [ChatMessage(content="i0")])
        returned.clear()
        worker = threading.Thread(target=remove)
        worker.start()
        barrier.wait()
        appender.add_message(KEY, ChatMessage(content="A1"))
        worker.join()
        _check_outcome(checker, removal, _texts(returned[0]))
        checker.delete_messages(KEY)


def test_delete_oldest_of_every_message_racing_an_append(
    make_store: Callable[..., AzureChatStore],
) -> None:
    """delete_oldest_messages(n=count) returns at most n messages, and only those removed.

    If this fails: it handed off to delete_all, which removed (and returned) the append.
    """
    remover, appender, checker = make_store(), make_store(), make_store()
    for gap in range(2, 6):
        checker.set_messages(KEY, numbered(4))
        returned = run(
            remover,
            remover._oldest_plan(KEY, 4, Change()),
            pause_before=gap,
            meanwhile=lambda: appender.add_message(KEY, ChatMessage(content="A1")),
        )
        assert _texts(returned) == ["m0", "m1", "m2", "m3"]
        assert _texts(checker.get_messages(KEY)) == ["A1"]
        assert checker.get_keys() == [KEY]
        checker.delete_messages(KEY)


def test_a_tool_safe_trim_whose_rows_go_meanwhile_starts_over(
    make_store: Callable[..., AzureChatStore],
) -> None:
    """delete_oldest_messages(tool_safe) finding the messages after the cut gone starts over.

    The conversation is emptied between the meta read and the read past the cut. If this
    fails: that read took the changed meta entity for an empty page and read again, forever.
    """
    trimmer, other = make_store(), make_store()
    other.set_messages(KEY, numbered(4))
    returned = run(
        trimmer,
        trimmer._oldest_plan(KEY, 1, Change(), True),
        pause_before=2,
        meanwhile=lambda: other.delete_messages(KEY),
        max_requests=10,
    )
    assert returned == []
    assert other.get_messages(KEY) == []


@pytest.mark.parametrize("layout", LAYOUTS)
def test_insert_at_the_front_of_an_empty_conversation_racing_an_append(
    make_store: Callable[..., AzureChatStore], layout: str
) -> None:
    """add_message(idx=0) on [] with an append landing meanwhile ends [A0, x], whichever first.

    The append runs between each pair of the insert's requests in turn. If this fails: the
    insert saw the conversation empty and handed off to append, which read it again and put
    the message after x (seen by the concurrent-history check as a pop returning a message
    that was not last).
    """
    inserter, appender, checker = make_store(layout), make_store(layout), make_store(layout)
    for gap in range(1, 7):
        checker.delete_messages(KEY)
        run(
            inserter,
            inserter._add_plan(KEY, [ChatMessage(content="A0")], 0, Change()),
            pause_before=gap,
            meanwhile=lambda: appender.add_message(KEY, ChatMessage(content="x")),
        )
        assert _texts(checker.get_messages(KEY)) == ["A0", "x"], gap
        assert checker.count_messages(KEY) == 2


@pytest.mark.parametrize("writer", ["other", "reader"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_window_read_racing_an_insert_is_one_state(
    make_store: Callable[..., AzureChatStore], layout: str, writer: str
) -> None:
    """get_messages(offset=-2) of [m0, m1, m2] while X is inserted at -1: old or new state.

    The conversation is written by another instance (the reader remembers no meta entity,
    or a stale one) or by the reader (it remembers the current one and reads the rows
    first). The insert runs between each pair of the read's requests in turn. If this
    fails: the read took the rows at the positions its meta entity named after an insert
    rewrote them in place ([m1, X]: a conversation that never existed).
    """
    reader, inserter, checker = make_store(layout), make_store(layout), make_store(layout)
    author = reader if writer == "reader" else checker
    for gap in range(1, 5):
        author.set_messages(KEY, numbered(3))
        got = run(
            reader,
            reader._get_plan(KEY, -2, None),
            pause_before=gap,
            meanwhile=lambda: inserter.add_message(KEY, ChatMessage(content="X"), idx=-1),
        )
        assert _texts(got) in (["m1", "m2"], ["X", "m2"]), gap
        assert _texts(checker.get_messages(KEY)) == ["m0", "m1", "X", "m2"]


_MODEL_REMOVALS: dict[
    str, tuple[Callable[[AzureChatStore], Plan[Any]], Callable[[list[str]], Any]]
] = {
    "pop": (lambda s: s._pop_plan(KEY, Change()), lambda xs: (xs[-1:], xs[:-1])),
    "delete_at_-1": (lambda s: s._delete_at_plan(KEY, -1, Change()), lambda xs: (xs[-1:], xs[:-1])),
    "delete_at_1": (
        lambda s: s._delete_at_plan(KEY, 1, Change()),
        lambda xs: (xs[1:2], xs[:1] + xs[2:]),
    ),
    "delete_oldest_2": (lambda s: s._oldest_plan(KEY, 2, Change()), lambda xs: (xs[:2], xs[2:])),
    "delete_all": (lambda s: s._delete_all_plan(KEY, Change()), lambda xs: (xs, [])),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("removal", list(_MODEL_REMOVALS))
def test_a_removal_racing_an_append_acts_on_one_state(
    make_store: Callable[..., AzureChatStore], layout: str, removal: str
) -> None:
    """A removal on [m0, m1] with X appended (and the result read) meanwhile is linearizable.

    Either the removal came first (the read shows its result plus X) or after the read
    (it acted on [m0, m1, X]). The append and read run between each pair of the removal's
    requests in turn. If this fails: the removal deleted rows it read before the append
    and returned them although a later read still saw them with X after them (a pop
    returning a message that was no longer the last).
    """
    remover, appender, checker = make_store(layout), make_store(layout), make_store(layout)
    plan, model = _MODEL_REMOVALS[removal]
    seen: list[str] = []

    def append_and_read() -> None:
        appender.add_message(KEY, ChatMessage(content="X"))
        seen.extend(_texts(checker.get_messages(KEY)))

    for gap in range(1, 7):
        checker.set_messages(KEY, numbered(2))
        seen.clear()
        returned = _texts(run(remover, plan(remover), pause_before=gap, meanwhile=append_and_read))
        final = _texts(checker.get_messages(KEY))
        first, rest = model(["m0", "m1"])
        after, left = model(["m0", "m1", "X"])
        assert (returned, seen, final) in (
            (first, [*rest, "X"], [*rest, "X"]),
            (after, ["m0", "m1", "X"], left),
        ), (gap, returned, seen, final)


# -- item 11: corrupt conversations are reported promptly and can be deleted ----------------


def _conversation_rows(raw: TableClient) -> list[dict[str, Any]]:
    rows = raw.query_entities("PartitionKey eq @pk", parameters={"pk": encode_key(KEY)})
    return [dict(r) for r in rows]


def _drop_row(raw: TableClient, position: int) -> None:
    rows = [r for r in _conversation_rows(raw) if r["RowKey"] != "meta"]
    raw.delete_entity(encode_key(KEY), rows[position]["RowKey"])


def _meta_past_rows(raw: TableClient, extra: int = 2) -> None:
    meta = raw.get_entity(encode_key(KEY), "meta")
    meta["Next"] = EntityProperty(meta["Next"].value + extra, EdmType.INT64)
    raw.update_entity(meta, mode=UpdateMode.REPLACE)


_CORRUPTIONS: dict[str, tuple[Callable[[TableClient], None], int]] = {
    "missing_row": (lambda raw: _drop_row(raw, 1), 1),
    "meta_past_rows": (_meta_past_rows, 3),
}


@pytest.fixture(params=list(_CORRUPTIONS))
def corrupt(
    request: pytest.FixtureRequest, make_store: Callable[..., AzureChatStore], raw: TableClient
) -> tuple[AzureChatStore, int]:
    """[m0, m1, m2] with a hole; returns a store and the first position that is missing."""
    store = make_store()
    store.add_messages(KEY, numbered(3))
    damage, position = _CORRUPTIONS[request.param]
    damage(raw)
    return store, position


def _assert_gone(store: AzureChatStore, raw: TableClient) -> None:
    assert store.get_messages(KEY) == []
    assert store.count_messages(KEY) == 0
    assert store.get_keys() == []
    # Only the emptied meta entity stays (its record of operation ids), naming no rows.
    left = _conversation_rows(raw)
    assert [r["RowKey"] for r in left] in ([], ["meta"])
    assert all(r["Head"] == r["Next"] for r in left)


def test_reading_a_conversation_with_a_hole_raises_corrupt_data_at_once(
    corrupt: tuple[AzureChatStore, int],
) -> None:
    """A missing row at a stable meta entity is CorruptDataError naming key and position.

    If this fails: reads treat "rows missing at the same meta version" as "changed under
    me" and retry until they give up (about 100 s) with a generic error.
    """
    store, position = corrupt
    with pytest.raises(CorruptDataError) as info:
        run(store, store._get_plan(KEY, 0, None), max_requests=6)
    assert (info.value.key, info.value.position) == (KEY, position)
    assert repr(KEY) in str(info.value)
    assert f"position {position}" in str(info.value)
    # Windows that avoid the hole still read.
    assert _texts(store.get_messages(KEY, limit=1)) == ["m0"]


def test_delete_messages_of_a_conversation_with_a_hole_removes_it_then_raises(
    corrupt: tuple[AzureChatStore, int], raw: TableClient
) -> None:
    """delete_messages removes what is there, at once, then raises naming the first hole.

    If this fails: the delete retries on the inconsistency until it gives up, refuses to
    remove a damaged conversation, or removes it without saying so.
    """
    store, position = corrupt
    with pytest.raises(CorruptDataError, match=REMOVED) as info:
        run(store, store._delete_all_plan(KEY, Change()), max_requests=8)
    assert (info.value.key, info.value.position) == (KEY, position)
    assert info.value.data is None  # a missing row: nothing was stored there
    _assert_gone(store, raw)


def test_set_messages_empty_removes_a_conversation_with_a_hole(
    corrupt: tuple[AzureChatStore, int], raw: TableClient
) -> None:
    """set_messages(key, []) removes it without raising (it returns nothing).

    If this fails: replace([]) goes through a delete that cannot handle missing rows.
    """
    store, _ = corrupt
    run(store, store._set_plan(KEY, [], Change()), max_requests=10)
    _assert_gone(store, raw)


def test_set_messages_replaces_a_conversation_with_a_hole(
    corrupt: tuple[AzureChatStore, int], raw: TableClient
) -> None:
    """set_messages(key, [x]) replaces it: [x] and no stray rows.

    If this fails: the one-transaction replace deletes the missing rows (404) and
    retries on the same meta entity until it gives up.
    """
    store, _ = corrupt
    run(store, store._set_plan(KEY, [ChatMessage(content="x")], Change()), max_requests=12)
    assert _texts(store.get_messages(KEY)) == ["x"]
    assert len(_conversation_rows(raw)) == 2  # x and the meta entity
    assert store.get_keys() == [KEY]


_HOLE_CALLS: dict[str, tuple[int, list[str]]] = {  # the row dropped, and what is left
    "pop": (2, ["m0", "m1"]),
    "delete_at": (0, ["m1", "m2"]),
    "delete_at_1": (1, ["m0", "m2"]),
    "delete_oldest": (0, ["m2"]),
    "insert": (0, []),
}


@pytest.mark.parametrize("call", list(_HOLE_CALLS))
def test_other_calls_on_a_hole_raise_corrupt_data_at_once(
    make_store: Callable[..., AzureChatStore], raw: TableClient, call: str
) -> None:
    """Calls that meet the missing row raise CorruptDataError promptly.

    A removal of the missing row removes it all the same (the meta entity moves, the other
    rows shift) and says so; an insert, which must keep it, changes nothing.

    If this fails: they retry on the inconsistency until they give up, or a removal
    refuses to remove a missing row.
    """
    store = make_store()
    store.add_messages(KEY, numbered(3))
    dropped, left = _HOLE_CALLS[call]
    _drop_row(raw, dropped)
    plans = {
        "pop": lambda: store._pop_plan(KEY, Change()),
        "delete_at": lambda: store._delete_at_plan(KEY, 0, Change()),
        "delete_at_1": lambda: store._delete_at_plan(KEY, 1, Change()),
        "delete_oldest": lambda: store._oldest_plan(KEY, 2, Change()),
        "insert": lambda: store._add_plan(KEY, [ChatMessage(content="x")], 1, Change()),
    }
    with pytest.raises(CorruptDataError) as info:
        run(store, plans[call](), max_requests=6)
    assert (info.value.key, info.value.position) == (KEY, dropped)
    if call == "insert":
        assert REMOVED not in str(info.value)
        assert store.count_messages(KEY) == 3
        return
    assert REMOVED in str(info.value)
    assert _texts(store.get_messages(KEY)) == left
    assert store.count_messages(KEY) == len(left)


def test_a_meta_entity_that_is_unreadable_is_removable(
    make_store: Callable[..., AzureChatStore], raw: TableClient
) -> None:
    """A meta entity that is not ours (Gen not text) is CorruptDataError; removals remove it.

    delete_messages removes the conversation, then raises holding the meta entity as read;
    set_messages(key, []) removes it silently. If this fails: either reads the meta entity
    first and gives up on it.
    """
    store = make_store()

    def damage() -> None:
        store.add_messages(KEY, numbered(2))
        meta = raw.get_entity(encode_key(KEY), "meta")
        meta["Gen"] = 7
        raw.update_entity(meta, mode=UpdateMode.REPLACE)

    damage()
    with pytest.raises(CorruptDataError, match=repr(KEY)):
        store.get_messages(KEY)
    with pytest.raises(CorruptDataError, match=REMOVED) as info:
        store.delete_messages(KEY)
    assert "'Gen': 7" in str(info.value.data)
    _assert_gone(store, raw)
    damage()
    store.set_messages(KEY, [])
    _assert_gone(store, raw)
    store.add_message(KEY, ChatMessage(content="again"))
    assert _texts(store.get_messages(KEY)) == ["again"]


def _corrupt_json(store: AzureChatStore, raw: TableClient, layout: str) -> None:
    """[m0, m1, m2] with m1 not a message."""
    store.add_messages(KEY, numbered(3))
    rows = [r for r in _conversation_rows(raw) if r["RowKey"] != "meta"]
    row = rows[1]
    if layout == "native":
        row["Message"] = '{"role": "user", "blocks": 42}'
    else:
        row["blocks"] = "{"
    raw.upsert_entity(row, mode=UpdateMode.REPLACE)


_JSON_REMOVALS: dict[str, Callable[[AzureChatStore], object]] = {
    "delete_messages": lambda s: s.delete_messages(KEY),
    "delete_message": lambda s: s.delete_message(KEY, 1),
    "delete_message_-2": lambda s: s.delete_message(KEY, -2),
    "delete_oldest": lambda s: s.delete_oldest_messages(KEY, 2),
}


_LEFT = {
    "delete_messages": [],
    "delete_message": ["m0", "m2"],
    "delete_message_-2": ["m0", "m2"],
    "delete_oldest": ["m2"],
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("removal", list(_JSON_REMOVALS))
def test_removing_a_message_that_is_not_json_removes_it_then_raises(
    make_store: Callable[..., AzureChatStore], raw: TableClient, layout: str, removal: str
) -> None:
    """A removal that meets unparseable data removes what it was asked, then raises.

    The error names key and position, says the data was removed and holds it as stored.
    If this fails: the removal refuses (corrupt data must stay removable), skips the bad
    message, or drops it without handing it back.
    """
    store = make_store(layout)
    _corrupt_json(store, raw, layout)
    with pytest.raises(CorruptDataError, match=REMOVED) as info:
        _JSON_REMOVALS[removal](store)
    assert (info.value.key, info.value.position) == (KEY, 1)
    assert ('"blocks": 42' if layout == "native" else '"{"') in str(info.value.data)
    assert _texts(store.get_messages(KEY)) == _LEFT[removal]
    assert store.count_messages(KEY) == len(_LEFT[removal])
    assert store.get_keys() == ([KEY] if _LEFT[removal] else [])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_popping_a_message_that_is_not_json_removes_it_then_raises(
    make_store: Callable[..., AzureChatStore], raw: TableClient, layout: str
) -> None:
    """delete_last_message of an unparseable last message removes it, then raises.

    If this fails: the pop refuses to remove it, or skips it.
    """
    store = make_store(layout)
    _corrupt_json(store, raw, layout)
    assert _texts(store.delete_last_message(KEY)) == ["m2"]
    with pytest.raises(CorruptDataError, match=REMOVED) as info:
        store.delete_last_message(KEY)
    assert (info.value.key, info.value.position) == (KEY, 1)
    assert info.value.data
    assert _texts(store.get_messages(KEY)) == ["m0"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_removing_readable_messages_next_to_corrupt_data_works(
    make_store: Callable[..., AzureChatStore], raw: TableClient, layout: str
) -> None:
    """Removals that return only readable messages go ahead; the unreadable one moves along.

    If this fails: a removal parses messages it does not return (delete_message shifts the
    later rows) and refuses because of them.
    """
    store = make_store(layout)
    _corrupt_json(store, raw, layout)
    assert _texts(store.delete_message(KEY, 0)) == ["m0"]
    assert _texts(store.delete_last_message(KEY)) == ["m2"]
    with pytest.raises(CorruptDataError) as info:
        store.get_messages(KEY)
    assert (info.value.key, info.value.position) == (KEY, 0)
    assert store.count_messages(KEY) == 1


# -- item 11: keys Azurite accepts but cannot delete -----------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("key", ["a\u2028b", "\u2029", "x%u2028y\u2028"])
def test_line_separator_keys_are_written_read_and_deleted(
    make_store: Callable[..., AzureChatStore], layout: str, key: str
) -> None:
    """Keys holding U+2028/U+2029 round-trip and can be deleted (encoded reversibly).

    If this fails: the separators reach a PartitionKey, which Azurite stores but refuses
    to delete (400 InvalidInput), so the conversation can never be removed.
    """
    store = make_store(layout)
    store.add_messages(key, numbered(3))
    assert store.get_keys() == [key]
    assert _texts(store.delete_last_message(key)) == ["m2"]
    assert _texts(store.delete_message(key, 0)) == ["m0"]
    assert _texts(store.delete_messages(key)) == ["m1"]
    assert store.get_keys() == []
    store.add_message(key, ChatMessage(content="again"))
    store.clear()
    assert store.get_keys() == []


def test_key_encoding_is_reversible_and_addressable() -> None:
    """Every escaped form decodes back; no separator reaches a PartitionKey."""
    for key in ["a\u2028b\u2029", "%u2028", "%25", "%u20", "/%2028\u2028", "plain"]:
        encoded = encode_key(key)
        assert "\u2028" not in encoded
        assert "\u2029" not in encoded
        assert decode_key(encoded) == key
    assert encode_key("plain") == "plain"
