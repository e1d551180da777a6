"""The DynamoDBChatStore blocks of LlamaIndex's chat-store page, run on ours as written.

LlamaIndex mode only (the blocks use LlamaIndex's messages). Credentials, region and
address come the way the page expects them, from an AWS profile: a config file naming the
session's moto server as the endpoint, selected by ``AWS_PROFILE``. The page creates
``EXAMPLE_TABLE`` with boto3 (LlamaIndex's hash-key-only layout); it is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

pytestmark = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="runs LlamaIndex's documented code: llama-index-core is not installed here (the "
    "llama-index test environment runs this)",
)

PROFILE = "chat-store-docs"


@pytest.fixture
def aws_profile(
    dynamodb_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An AWS profile whose endpoint is the session's moto server, selected by AWS_PROFILE."""
    config = tmp_path / "config"
    config.write_text(
        f"[profile {PROFILE}]\nregion = us-east-1\nendpoint_url = {dynamodb_url}\n",
        encoding="utf-8",
    )
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[{PROFILE}]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
        encoding="utf-8",
    )
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", PROFILE)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    yield PROFILE
    client = boto3.Session(profile_name=PROFILE).client("dynamodb")
    with contextlib.suppress(client.exceptions.ResourceNotFoundException):
        client.delete_table(TableName="EXAMPLE_TABLE")


def _page_calls(chat_store: object) -> str:
    """Run the page's usage calls on ``chat_store``; return what they print."""
    from llama_index.core.llms import ChatMessage, MessageRole

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # A chat history, which doesn't exist yet, returns an empty array.
        print(chat_store.get_messages("123"))  # type: ignore[attr-defined]

        messages = [
            ChatMessage(role=MessageRole.USER, content="Who are you?"),
            ChatMessage(role=MessageRole.ASSISTANT, content="I am your helpful AI assistant."),
        ]
        chat_store.set_messages(key="123", messages=messages)  # type: ignore[attr-defined]
        print(chat_store.get_messages("123"))  # type: ignore[attr-defined]

        # Appending a message to an existing chat history
        message = ChatMessage(role=MessageRole.USER, content="What can you do?")
        chat_store.add_message(key="123", message=message)  # type: ignore[attr-defined]
        print(chat_store.get_messages("123"))  # type: ignore[attr-defined]
    return out.getvalue()


def test_docs_dynamodb_table_and_usage(aws_profile: str) -> None:
    """The page's create_table and DynamoDBChatStore calls print what LlamaIndex's store prints.

    If this fails: the store does not take ``profile_name`` or the profile's endpoint and
    region, does not detect LlamaIndex's hash-key-only table, or returns other messages.
    """
    from llama_index.core.storage.chat_store import SimpleChatStore as LlamaIndexSimpleChatStore
    from llama_index.storage.chat_store.dynamodb.base import DynamoDBChatStore

    # Get the service resource.
    dynamodb = boto3.resource("dynamodb")

    # Create the DynamoDB table.
    table = dynamodb.create_table(
        TableName="EXAMPLE_TABLE",
        KeySchema=[{"AttributeName": "SessionId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "SessionId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    # Initialize DynamoDB chat store
    chat_store = DynamoDBChatStore(
        table_name="EXAMPLE_TABLE", profile_name=os.getenv("AWS_PROFILE")
    )

    printed = _page_calls(chat_store)
    assert printed == _page_calls(LlamaIndexSimpleChatStore())
    assert printed.startswith("[]\n[ChatMessage(role=<MessageRole.USER: 'user'>")
    item = table.get_item(Key={"SessionId": "123"}, ConsistentRead=True)["Item"]
    assert len(item["History"]) == 3  # LlamaIndex's layout: the history in one item
    chat_store.close()
