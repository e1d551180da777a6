"""The catalog on DynamoDB: what the suite cannot see (old items and tables, races, index)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import botocore.session
import pytest

from llama_index.storage.chat_store.core import (
    Capability,
    CapabilityNotSupportedError,
    ChatMessage,
    ConfigurationError,
)
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore
from llama_index.storage.chat_store.dynamodb._native_meta import (
    CATALOG_INDEX,
    CREATED,
    LISTED,
    METADATA,
    ORDER,
    UPDATED,
    native_table_definition,
)
from llama_index.storage.chat_store.testing.catalog import walk_catalog
from llama_index.storage.chat_store.testing.faults import FaultKind, FaultProxy, address_of

_CATALOG_FIELDS = (CREATED, UPDATED, METADATA, LISTED, ORDER)


def _age(moto: Any, store: DynamoDBChatStore, key: str) -> None:
    """Make ``key``'s meta item look as an earlier version wrote it (no catalog fields)."""
    moto.client().update_item(
        TableName=store.table_name,
        Key={"SessionId": {"S": key}, "Seq": {"N": "0"}},
        UpdateExpression="REMOVE " + ", ".join(f"#f{i}" for i in range(len(_CATALOG_FIELDS))),
        ExpressionAttributeNames={f"#f{i}": f for i, f in enumerate(_CATALOG_FIELDS)},
    )


def _old_table(moto: Any) -> DynamoDBChatStore:
    """A recommended table as earlier versions created it: no catalog index."""
    store = DynamoDBChatStore(
        table_name=f"chat-old-{time.time_ns()}", endpoint_url=moto.url, **moto.credentials
    )
    definition = native_table_definition(store.table_name, "SessionId", "Seq", "TTL")
    definition["GlobalSecondaryIndexes"] = [
        i for i in definition["GlobalSecondaryIndexes"] if i["IndexName"] != CATALOG_INDEX
    ]
    definition["AttributeDefinitions"] = [
        a for a in definition["AttributeDefinitions"] if a["AttributeName"] not in (LISTED, ORDER)
    ]
    moto.client().create_table(**definition)
    return store


def test_old_meta_items_read_without_times_until_the_next_change(
    native_store: DynamoDBChatStore, moto: Any
) -> None:
    native_store.add_messages("old", [ChatMessage(content="a"), ChatMessage(content="b")])
    _age(moto, native_store, "old")
    fresh = DynamoDBChatStore(
        table_name=native_store.table_name, endpoint_url=moto.url, **moto.credentials
    )
    info = fresh.get_conversation("old")
    assert info is not None
    assert (info.message_count, info.created_at, info.updated_at, info.metadata) == (
        2, None, None, {}
    )  # fmt: skip
    fresh.add_message("old", ChatMessage(content="c"))
    info = fresh.get_conversation("old")
    assert info is not None
    assert info.message_count == 3
    assert info.created_at is None  # when it began is not known
    assert info.updated_at is not None
    assert [c.key for c in fresh.list_conversations().conversations] == ["old"]
    assert fresh.set_metadata("old", {"title": "kept"}).metadata == {"title": "kept"}
    fresh.delete_messages("old")
    fresh.add_message("old", ChatMessage(content="new"))
    again = fresh.get_conversation("old")
    assert again is not None
    assert again.created_at is not None
    assert again.metadata == {}


def test_a_table_without_the_catalog_index_is_migrated_by_create_table(moto: Any) -> None:
    store = _old_table(moto)
    keys = [f"u{i}" for i in range(7)]
    for key in keys:
        store.add_message(key, ChatMessage(content=key))
        _age(moto, store, key)
    store.delete_messages("u3")  # a removed conversation stays unlisted
    with pytest.raises(ConfigurationError, match=r"create_table\(\)"):
        store.list_conversations()
    info = store.get_conversation("u1")  # one entry needs no index
    assert info is not None
    assert (info.message_count, info.created_at, info.metadata) == (1, None, {})
    other = DynamoDBChatStore(
        table_name=store.table_name, endpoint_url=moto.url, **moto.credentials
    )
    other.count_messages("u1")  # described the table before the migration
    store.create_table()
    store.create_table()  # idempotent
    expected = [k for k in keys if k != "u3"]
    assert walk_catalog(store, limit=2) == expected
    assert walk_catalog(other, limit=100) == expected
    page = other.list_conversations(prefix="u1")
    assert [(c.key, c.message_count, c.updated_at) for c in page.conversations] == [("u1", 1, None)]


def test_keys_sharing_their_first_kilobyte_list_in_key_order(
    native_store: DynamoDBChatStore,
) -> None:
    # The index sorts a key's first 1,024 bytes: these tie there and are ordered by the store.
    base = "k" * 1030
    keys = [base + tail for tail in ("z", "b", "m", "a", "bb", "é", "😀")]
    keys += ["k" * 1020 + "😀" * 3, "k" * 1022, "j", "l"]
    for key in keys:
        native_store.add_message(key, ChatMessage(content="x"))
    assert walk_catalog(native_store, limit=2) == sorted(keys)
    assert walk_catalog(native_store, limit=3) == sorted(keys)
    assert walk_catalog(native_store, prefix=base + "b", limit=1) == [base + "b", base + "bb"]
    long = sorted(k for k in keys if k.startswith("k" * 1021))
    assert walk_catalog(native_store, prefix="k" * 1021, limit=2) == long


def test_entries_no_longer_live_are_skipped_and_the_page_filled(moto: Any) -> None:
    store = moto.store("native", ttl=3600)
    keys = [f"c{i:02d}" for i in range(12)]
    for key in keys:
        store.add_message(key, ChatMessage(content="x"))
    # Expired but not deleted yet (DynamoDB deletes days later): still in the index.
    for key in keys[1:9]:
        moto.client().update_item(
            TableName=store.table_name,
            Key={"SessionId": {"S": key}, "Seq": {"N": "0"}},
            UpdateExpression="SET #t = :past",
            ExpressionAttributeNames={"#t": "TTL"},
            ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 10)}},
        )
    page = store.list_conversations(limit=3)
    assert [c.key for c in page.conversations] == ["c00", "c09", "c10"]
    assert page.next_after == "c10"
    assert walk_catalog(store, limit=2) == ["c00", "c09", "c10", "c11"]
    assert store.get_conversation("c01") is None


def test_a_page_costs_two_requests_whatever_the_table_holds(moto: Any) -> None:
    writer = moto.store("native")
    for i in range(60):
        writer.add_message(f"u{i:02d}", ChatMessage(content="x"))
    calls: list[str] = []
    session = botocore.session.Session()
    session.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    store = DynamoDBChatStore(
        table_name=writer.table_name, layout="native", botocore_session=session,
        endpoint_url=moto.url, **moto.credentials,
    )  # fmt: skip
    store.count_messages("warm-up")
    calls.clear()
    page = store.list_conversations(prefix="u3", after="u31", limit=5)
    assert [c.key for c in page.conversations] == ["u32", "u33", "u34", "u35", "u36"]
    assert calls == ["Query", "BatchGetItem"]  # the index from the cursor; no Scan


def test_capability_follows_the_layout(moto: Any) -> None:
    native, theirs = moto.store("native"), moto.store("llama_index")
    auto = {
        made.layout: DynamoDBChatStore(
            table_name=made.table_name, endpoint_url=moto.url, **moto.credentials
        )
        for made in (native, theirs)
    }
    assert Capability.CATALOG in native.capabilities
    assert Capability.CATALOG in auto["native"].capabilities  # described on first use
    assert Capability.CATALOG not in theirs.capabilities
    assert Capability.CATALOG not in auto["llama_index"].capabilities
    auto["llama_index"].add_message("k", ChatMessage(content="x"))
    with pytest.raises(CapabilityNotSupportedError, match="LlamaIndex's layout"):
        auto["llama_index"].list_conversations()
    with pytest.raises(CapabilityNotSupportedError, match="catalog"):
        auto["llama_index"].set_metadata("k", {"title": "x"})


@pytest.mark.parametrize("kind", [FaultKind.DROP_REQUEST, FaultKind.DROP_REPLY])
def test_set_metadata_cut_anywhere_applies_once(moto: Any, kind: FaultKind) -> None:
    direct = moto.store("native")
    with FaultProxy(*address_of(moto.url, 80)) as proxy:
        proxied = DynamoDBChatStore(
            **{**moto.factory(direct).keywords, "endpoint_url": f"http://{proxy.host}:{proxy.port}"}
        )
        for nth in range(1, 10):
            key = f"cut-{uuid.uuid4().hex}"
            direct.add_messages(key, [ChatMessage(content="a"), ChatMessage(content="b")])
            direct.set_metadata(key, {"gone": 1, "kept": 2})
            fault = proxy.inject(kind, nth=nth)
            try:
                info = proxied.set_metadata(key, {"gone": None, "title": "t"})
            finally:
                proxy.clear()
            if not fault.fired:
                break
            held = direct.get_conversation(key)
            assert held is not None
            assert held.metadata == info.metadata == {"kept": 2, "title": "t"}, nth
            assert (held.message_count, info.message_count) == (2, 2)
            assert held.updated_at == info.updated_at, nth  # one commit, whatever was cut
        assert nth > 1
        proxied.close()
    direct.close()
