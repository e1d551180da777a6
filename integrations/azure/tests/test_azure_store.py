"""AzureChatStore beyond the suite: faults, limits, URLs, layout details, big payloads."""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest
from azure.data.tables import TableClient

from llama_index.storage.chat_store.azure import AzureChatStore
from llama_index.storage.chat_store.azure._codec import HASHED_PREFIX, encode_key, order_key
from llama_index.storage.chat_store.azure.testing import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_connection_string,
    azurite_endpoint,
    start_azurite,
)
from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendUnavailableError,
    Capability,
    ChatMessage,
    ConfigurationError,
    PayloadTooLargeError,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import Change, Plan, drive
from llama_index.storage.chat_store.core.registry import chat_store_from_dict, chat_store_from_url
from llama_index.storage.chat_store.testing.samples import numbered


@pytest.fixture
def table(azurite_table_endpoint: str) -> Iterator[str]:
    name = f"S{uuid.uuid4().hex[:16]}"
    yield name
    client = TableClient.from_connection_string(
        azurite_connection_string(azurite_table_endpoint), name
    )
    with client:
        client.delete_table()


@pytest.fixture
def store(azurite_table_endpoint: str, table: str) -> Iterator[AzureChatStore]:
    with AzureChatStore.from_account_and_key(
        AZURITE_ACCOUNT, AZURITE_KEY, endpoint=azurite_table_endpoint, chat_table_name=table
    ) as store:
        yield store


def _raw_rows(endpoint: str, table: str) -> list[dict[str, object]]:
    client = TableClient.from_connection_string(azurite_connection_string(endpoint), table)
    with client:
        return [dict(e) for e in client.list_entities()]


def test_wrong_account_key_is_authentication_error(azurite_table_endpoint: str) -> None:
    bad_key = base64.b64encode(b"not the key" * 4).decode()
    store = AzureChatStore.from_account_and_key(
        AZURITE_ACCOUNT, bad_key, endpoint=azurite_table_endpoint, chat_table_name="Denied"
    )
    with pytest.raises(AuthenticationError):
        store.get_messages("k")
    with pytest.raises(AuthenticationError):
        asyncio.run(store.aadd_message("k", ChatMessage(content="x")))
    assert bad_key not in repr(store) + store.model_dump_json()


@pytest.mark.parametrize("name", ["ab", "chat-user", "1abc", "x" * 64, "tables"])
def test_table_names_azure_rejects(name: str) -> None:
    with pytest.raises(ConfigurationError):
        AzureChatStore.from_account_and_key("acct", "a2V5", chat_table_name=name)


def test_llama_index_layout_sanitizes_table_names_like_llama_index() -> None:
    store = AzureChatStore.from_account_and_key(
        "acct", "a2V5", chat_table_name="chat-user", layout="llama_index"
    )
    assert store.chat_table_name == "chatuser"
    assert store.metadata_partition_key == "chatuser"
    short = AzureChatStore.from_account_and_key(
        "acct", "a2V5", chat_table_name="1", layout="llama_index"
    )
    assert short.chat_table_name == "A1A"


def test_server_stopped_mid_run_then_back() -> None:
    """A stopped Azurite raises BackendUnavailableError; the same store works once it is back."""
    server = start_azurite()
    try:
        store = AzureChatStore.from_connection_string(
            azurite_connection_string(azurite_endpoint(server.port)),
            chat_table_name="Faults", retries=0, timeout=3,
        )  # fmt: skip
        store.add_message("k", ChatMessage(content="before"))
        server.stop()
        with pytest.raises(BackendUnavailableError, match=str(server.port)):
            store.add_message("k", ChatMessage(content="during"))
        with pytest.raises(BackendUnavailableError):
            asyncio.run(store.aget_messages("k"))
        server.start()
        # In-memory Azurite comes back empty: the store recreates its table by itself.
        store.add_message("k", ChatMessage(content="after"))
        assert [m.content for m in store.get_messages("k")] == ["after"]
        assert asyncio.run(store.acount_messages("k")) == 1
    finally:
        server.cleanup()


def test_entity_over_the_limit_is_refused_before_writing(store: AzureChatStore) -> None:
    rng = random.Random(7)
    noise = base64.b64encode(rng.randbytes(1_500_000)).decode()  # incompressible
    with pytest.raises(PayloadTooLargeError, match="1,048,576"):
        store.add_message("k", ChatMessage(content=noise))
    with pytest.raises(PayloadTooLargeError):
        store.set_messages("k", [ChatMessage(content="fine"), ChatMessage(content=noise)])
    assert store.get_keys() == []


def test_big_conversation_round_trips(store: AzureChatStore) -> None:
    """300 messages of 100 KB plus one of 900 KB round-trip (split, compressed, batched)."""
    rng = random.Random(3)
    words = [f"w{i}" for i in range(5000)]
    many = [
        ChatMessage(role="user", content=" ".join(rng.choices(words, k=20_000))[:100_000])
        for _ in range(300)
    ]
    huge = ChatMessage(role="assistant", content=base64.b64encode(rng.randbytes(675_000)).decode())
    assert len(huge.content or "") == 900_000
    store.set_messages("big", many)
    store.add_message("big", huge)
    assert store.count_messages("big") == 301
    last = store.get_messages("big", offset=-2)
    assert [message_to_json(m) for m in last] == [message_to_json(many[-1]), message_to_json(huge)]
    got = store.get_messages("big")
    assert [message_to_json(m) for m in got] == [message_to_json(m) for m in [*many, huge]]


def test_batches_beyond_one_transaction(store: AzureChatStore) -> None:
    """Appends, inserts and deletes over 100 entities go through a rewrite, never a >100 batch."""
    store.add_messages("k", numbered(130))
    store.add_messages("k", numbered(120, start=130))
    store.add_message("k", ChatMessage(content="mid"), idx=125)
    removed = store.delete_message("k", 126)
    assert removed is not None
    assert removed.content == "m125"
    assert store.count_messages("k") == 250
    assert [m.content for m in store.delete_oldest_messages("k", 110)][-1] == "m109"
    assert store.get_messages("k", limit=2)[0].content == "m110"
    assert len(store.delete_messages("k") or []) == 140


def test_native_layout_on_the_wire(
    store: AzureChatStore, azurite_table_endpoint: str, table: str
) -> None:
    """One partition per conversation (meta entity inside), keys and order partitions, JSON."""
    key = "user/1#?"
    store.add_messages(key, numbered(2))
    store.set_metadata(key, {"title": "Trip"})
    rows = _raw_rows(azurite_table_endpoint, table)
    by_partition: dict[object, list[dict[str, object]]] = {}
    for row in rows:
        by_partition.setdefault(row["PartitionKey"], []).append(row)
    assert set(by_partition) == {"user%2F1%23%3F", "%keys", "%order"}
    conversation = by_partition["user%2F1%23%3F"]
    assert [r["RowKey"] for r in conversation][-1] == "meta"
    assert [r["Message"] for r in conversation[:-1]] == [message_to_json(m) for m in numbered(2)]
    meta = conversation[-1]
    assert meta["Metadata"] == '{"title":"Trip"}'
    created, updated = (getattr(meta[n], "value", meta[n]) for n in ("Created", "Updated"))
    assert 0 < created <= updated  # epoch ms (Edm.Int64)
    assert by_partition["%keys"][0]["Key"] == key
    assert [(r["RowKey"], r["Key"]) for r in by_partition["%order"]] == [(order_key(key), key)]


def test_keys_too_long_once_escaped_are_hashed(store: AzureChatStore) -> None:
    key = "/" * 256
    assert encode_key(key).startswith(HASHED_PREFIX)
    store.add_message(key, ChatMessage(content="slashes"))
    assert store.get_keys() == [key]
    assert store.get_messages(key)[0].content == "slashes"
    assert store.delete_last_message(key) is not None
    assert store.get_keys() == []


def test_from_url_with_key_and_from_environment(
    azurite_table_endpoint: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = (
        f"azuretable://{AZURITE_ACCOUNT}/{table}?endpoint={azurite_table_endpoint}"
        f"&account_key={AZURITE_KEY.replace('+', '%2B').replace('/', '%2F')}"
    )
    store = AzureChatStore.from_url(url)
    store.add_message("k", ChatMessage(content="via url"))
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string(azurite_table_endpoint)
    )
    from_env = AzureChatStore.from_url(f"azuretable:///{table}?layout=native")
    assert [m.content for m in from_env.get_messages("k")] == ["via url"]
    assert AZURITE_KEY not in repr(from_env) + from_env.model_dump_json()


def test_retry_options_from_url_and_the_capability_they_give() -> None:
    """retries, retry_backoff, retry_deadline come from the URL; retries=0 drops EXACTLY_ONCE.

    Both layouts declare EXACTLY_ONCE while the store retries.

    If this fails: from_url no longer converts them, or the capability ignores ``retries``.
    """
    base = "azuretable://acct/Chats?account_key=a2V5"
    store = AzureChatStore.from_url(f"{base}&retries=5&retry_backoff=0.5&retry_deadline=3")
    assert (store.retries, store.retry_backoff, store.retry_deadline) == (5, 0.5, 3.0)
    assert Capability.EXACTLY_ONCE in store.capabilities
    assert Capability.EXACTLY_ONCE not in AzureChatStore.from_url(f"{base}&retries=0").capabilities
    legacy = f"{base}&layout=llama_index"
    assert Capability.EXACTLY_ONCE in AzureChatStore.from_url(legacy).capabilities
    assert (
        Capability.EXACTLY_ONCE not in AzureChatStore.from_url(f"{legacy}&retries=0").capabilities
    )
    with pytest.raises(ValueError, match="retries"):
        AzureChatStore.from_url(f"{base}&retries=-1")


def test_core_registry_builds_the_store(azurite_table_endpoint: str, table: str) -> None:
    url = f"azuretable://{AZURITE_ACCOUNT}/{table}?endpoint={azurite_table_endpoint}"
    store = chat_store_from_url(url, account_key=AZURITE_KEY)
    assert isinstance(store, AzureChatStore)
    store.add_message("k", ChatMessage(content="x"))
    rebuilt = chat_store_from_dict(store.to_dict(), account_key=AZURITE_KEY)
    assert rebuilt.count_messages("k") == 1


def test_entry_points_are_registered() -> None:
    schemes = {e.name: e.value for e in entry_points(group="llama_index.storage.chat_store")}
    assert schemes["azuretable"] == "llama_index.storage.chat_store.azure:AzureChatStore"
    classes = {e.name for e in entry_points(group="llama_index.storage.chat_store.classes")}
    assert "AzureChatStore" in classes


def test_cosmos_mode_uses_the_cosmos_endpoint() -> None:
    store = AzureChatStore.from_account_and_key("acct", "a2V5", service_mode="cosmos")
    assert store._where == "https://acct.table.cosmos.azure.com"


@pytest.fixture
def make_store(azurite_table_endpoint: str, table: str) -> Iterator[Callable[[], AzureChatStore]]:
    """More instances over the table of ``store`` (each with its own memory)."""
    made: list[AzureChatStore] = []

    def make() -> AzureChatStore:
        made.append(AzureChatStore.from_account_and_key(
            AZURITE_ACCOUNT, AZURITE_KEY, endpoint=azurite_table_endpoint, chat_table_name=table
        ))  # fmt: skip
        return made[-1]

    yield make
    for instance in made:
        instance.close()


def _requests(store: AzureChatStore, plan: Plan[Any]) -> tuple[Any, int]:
    """Run a store plan on the store's real client; return its result and requests sent."""
    sent = 0

    def execute(step: Any) -> Any:
        nonlocal sent
        sent += 1
        return store._execute(step)

    return drive(plan, execute), sent


def _append(store: AzureChatStore) -> int:
    return _requests(store, store._add_plan("k", [ChatMessage(content="new")], None, Change()))[1]


def _pop(store: AzureChatStore) -> int:
    return _requests(store, store._pop_plan("k", Change()))[1]


def test_writes_plan_on_the_last_meta_seen(
    store: AzureChatStore, make_store: Callable[[], AzureChatStore]
) -> None:
    """After its own write or read, an append is one request and a pop two; reads always read."""
    store.add_messages("k", numbered(3))
    assert _append(store) == 1  # the transaction alone
    assert _pop(store) == 2  # meta entity and last row in one query, then the transaction
    assert _requests(store, store._set_plan("k", numbered(2), Change()))[1] == 1
    assert _requests(store, store._count_plan("k")) == (2, 1)
    # A new instance remembers nothing: it reads the meta entity first.
    assert _append(make_store()) == 2
    assert _pop(make_store()) == 3


def _read(store: AzureChatStore) -> tuple[list[str], int]:
    messages, sent = _requests(store, store._get_plan("k", 0, None))
    return [m.content or "" for m in messages], sent


def test_reads_start_from_the_last_meta_seen(
    store: AzureChatStore, make_store: Callable[[], AzureChatStore]
) -> None:
    """After its own write or read, a read is its rows then the meta entity: two requests."""
    store.add_messages("k", numbered(3))
    assert _read(store) == (["m0", "m1", "m2"], 2)
    assert _read(store) == (["m0", "m1", "m2"], 2)
    # A new instance remembers nothing: it reads the meta entity first.
    assert _read(make_store()) == (["m0", "m1", "m2"], 3)


_CHANGES: dict[str, Callable[[AzureChatStore], object]] = {
    "append": lambda other: other.add_message("k", ChatMessage(content="other")),
    "pop": lambda other: other.delete_last_message("k"),
    "replace": lambda other: other.set_messages("k", numbered(3, "r")),
    "delete": lambda other: other.delete_messages("k"),
}


@pytest.mark.parametrize("write", [_append, _pop])
@pytest.mark.parametrize("change", list(_CHANGES))
def test_a_stale_meta_costs_at_most_one_request(
    store: AzureChatStore,
    make_store: Callable[[], AzureChatStore],
    change: str,
    write: Callable[[AzureChatStore], int],
) -> None:
    """A write planned on a meta another instance has changed since costs one request more."""
    other = make_store()
    sent = []
    for writer in (store, None):
        store.set_messages("k", numbered(3))
        _CHANGES[change](other)
        sent.append(write(writer or make_store()))
    assert sent[0] <= sent[1] + 1


@pytest.mark.parametrize("change", list(_CHANGES))
def test_a_read_on_a_stale_meta_sees_the_change_for_one_request_more(
    store: AzureChatStore, make_store: Callable[[], AzureChatStore], change: str
) -> None:
    """A read planned on a meta another instance has changed since returns the new state.

    If this fails: the read took rows its remembered meta named without checking that the
    meta entity still has that ETag afterwards, or it retries more than once.
    """
    other = make_store()
    store.set_messages("k", numbered(3))
    _CHANGES[change](other)
    expected, fresh = _read(make_store())
    got, sent = _read(store)
    assert got == expected
    assert sent <= fresh + 1
