"""LlamaIndex's DynamoDBChatStore constructor forms build working stores, on a real moto server.

LlamaIndex's signature is ``DynamoDBChatStore(table_name, primary_key, profile_name,
region_name, aws_access_key_id, aws_secret_access_key, aws_session_token, botocore_session,
botocore_config, max_retries, timeout, session_kwargs, resource_kwargs, ttl_seconds,
ttl_attribute)``. Each form writes a message and reads it back; an argument no store knows
raises, naming it.
"""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from botocore.config import Config

from llama_index.storage.chat_store.core import ChatMessage
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore


def _round_trip(store: DynamoDBChatStore, key: str = "user1") -> None:
    store.add_message(key, ChatMessage(role="user", content="hi"))
    assert [m.content for m in store.get_messages(key)] == ["hi"]


def test_positional_arguments_follow_llama_index_order(moto: Any) -> None:
    """Every LlamaIndex argument given by position lands in the field of that name.

    If this fails: __init__'s positional parameters drifted from LlamaIndex's order.
    """
    table = moto.store("llama_index").table_name
    store = DynamoDBChatStore(
        table, "SessionId", None, "us-east-1", "testing", moto.secret, None, None,
        Config(connect_timeout=5), 2, 5.0, None, {"endpoint_url": moto.url}, 600, "Expiry",
    )  # fmt: skip
    _round_trip(store)
    assert (store.primary_key, store.region_name) == ("SessionId", "us-east-1")
    assert (store.max_retries, store.timeout) == (2, 5.0)
    assert (store.ttl, store.ttl_attribute) == (600, "Expiry")
    item = moto.client().get_item(TableName=table, Key={"SessionId": {"S": "user1"}})["Item"]
    assert "Expiry" in item
    store.close()


def test_botocore_session_and_session_kwargs(moto: Any) -> None:
    """A botocore session plus session_kwargs (LlamaIndex's keywords) reach boto3.

    If this fails: botocore_session or session_kwargs are no longer passed to boto3.Session.
    """
    table = moto.store("native").table_name
    store = DynamoDBChatStore(
        table_name=table,
        botocore_session=botocore.session.Session(),
        session_kwargs={"region_name": "us-east-1"},
        aws_access_key_id="testing",
        aws_secret_access_key=moto.secret,
        resource_kwargs={"endpoint_url": moto.url},
    )
    _round_trip(store)
    store.close()


def test_base_module_exports_the_store() -> None:
    """LlamaIndex's documented import path works.

    If this fails: dynamodb/base.py is missing or re-exports something else.
    """
    from llama_index.storage.chat_store.dynamodb.base import DynamoDBChatStore as FromBase

    assert FromBase is DynamoDBChatStore


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"session_id": "user1"}, "session_id"),
        ({"tll": 300}, "tll"),
        ({"ttl": 300, "ttl_seconds": 300}, "ttl_seconds"),
    ],
)
def test_unknown_argument_is_an_error_naming_it(
    moto: Any, options: dict[str, object], name: str
) -> None:
    """An argument the store does not take raises, naming it (no silent defaults).

    If this fails: the store's pydantic config no longer forbids extra arguments.
    """
    with pytest.raises((TypeError, ValueError), match=name):
        DynamoDBChatStore(table_name="chat", endpoint_url=moto.url, **options)  # type: ignore[arg-type]


def test_unknown_url_option_is_an_error_naming_it(moto: Any) -> None:
    """from_url's keyword options are checked the same way.

    If this fails: from_url passes unknown options somewhere that ignores them.
    """
    with pytest.raises((TypeError, ValueError), match="session_id"):
        DynamoDBChatStore.from_url(f"dynamodb://chat?endpoint_url={moto.url}", session_id="x")
