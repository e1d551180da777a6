"""Fixtures shared by the DynamoDB tests: stores on fresh tables of a real moto server."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore


class Moto:
    """Builds stores on fresh tables of one moto server, and raw clients to it."""

    secret = "moto-secret-do-not-leak-7f3a"

    def __init__(self, url: str) -> None:
        self.url = url
        self.credentials = {
            "region_name": "us-east-1",
            "aws_access_key_id": "testing",
            "aws_secret_access_key": self.secret,
        }

    def store(self, layout: str = "native", **options: Any) -> DynamoDBChatStore:
        """Create a fresh table in ``layout`` and return a store over it."""
        options.setdefault("table_name", f"chat-{uuid.uuid4().hex[:12]}")
        options.setdefault("endpoint_url", self.url)
        store = DynamoDBChatStore(layout=layout, **{**self.credentials, **options})
        store.create_table(layout=layout)  # type: ignore[arg-type]
        return store

    def client(self) -> Any:
        return boto3.client("dynamodb", endpoint_url=self.url, **self.credentials)

    def factory(self, store: DynamoDBChatStore) -> Callable[[], DynamoDBChatStore]:
        """A picklable factory of new instances over the same table (secrets included)."""
        config = {k: v for k, v in store.to_dict().items() if k != "class_name"}
        return functools.partial(DynamoDBChatStore, **config, aws_secret_access_key=self.secret)


@pytest.fixture
def moto(dynamodb_url: str) -> Moto:
    return Moto(dynamodb_url)


@pytest.fixture
def native_store(moto: Moto) -> Iterator[DynamoDBChatStore]:
    store = moto.store("native")
    yield store
    store.close()


@pytest.fixture
def llama_store(moto: Moto) -> Iterator[DynamoDBChatStore]:
    store = moto.store("llama_index")
    yield store
    store.close()
