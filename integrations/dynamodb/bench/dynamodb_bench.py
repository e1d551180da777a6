"""DynamoDB: DynamoDBChatStore beside raw boto3 put_item/query and LlamaIndex's store, on moto."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import boto3

from llama_index.storage.chat_store.bench import Backend, Reference, service
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore
from llama_index.storage.chat_store.dynamodb.testing import start_moto

CREDENTIALS = {
    "region_name": "us-east-1",
    "aws_access_key_id": "bench",
    "aws_secret_access_key": "bench",
}


def _ours(url: str) -> DynamoDBChatStore:
    store = DynamoDBChatStore(
        table_name=f"bench-ours-{uuid4().hex[:8]}", endpoint_url=url, **CREDENTIALS
    )
    store.create_table()
    return store


class RawBoto3:
    """The floor: one PutItem / Query / DeleteItem per call on an item-per-message table.

    The sequence number of the next message is kept in this process (no meta item, no
    conditions, no concurrency safety); a count is a ``Select=COUNT`` query.
    """

    label = "boto3 client: put_item / query (ScanIndexForward, Limit) / delete_item"

    def __init__(self, url: str) -> None:
        self.client = boto3.client("dynamodb", endpoint_url=url, **CREDENTIALS)
        self.table = f"bench-raw-{uuid4().hex[:8]}"
        self.client.create_table(
            TableName=self.table,
            AttributeDefinitions=[
                {"AttributeName": "SessionId", "AttributeType": "S"},
                {"AttributeName": "Seq", "AttributeType": "N"},
            ],
            KeySchema=[
                {"AttributeName": "SessionId", "KeyType": "HASH"},
                {"AttributeName": "Seq", "KeyType": "RANGE"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        self.next: dict[str, int] = {}

    def _item(self, key: str, message: str) -> dict[str, Any]:
        seq = self.next.get(key, 0)
        self.next[key] = seq + 1
        return {"SessionId": {"S": key}, "Seq": {"N": str(seq)}, "Message": {"S": message}}

    def _query(self, key: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params = {
            "TableName": self.table,
            "KeyConditionExpression": "SessionId = :k",
            "ExpressionAttributeValues": {":k": {"S": key}},
            **params,
        }
        while True:
            page = self.client.query(**params)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page or "Limit" in params:
                return items
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def add(self, key: str, message: str) -> None:
        """Put one message item."""
        self.client.put_item(TableName=self.table, Item=self._item(key, message))

    def add_many(self, key: str, messages: Sequence[str]) -> None:
        """Put the messages with BatchWriteItem, 25 at a time."""
        requests = [{"PutRequest": {"Item": self._item(key, m)}} for m in messages]
        for start in range(0, len(requests), 25):
            self.client.batch_write_item(RequestItems={self.table: requests[start : start + 25]})

    def get_all(self, key: str) -> list[str]:
        """Query the whole conversation."""
        return [i["Message"]["S"] for i in self._query(key)]

    def get_last(self, key: str, n: int) -> list[str]:
        """Query the last ``n`` items, newest first."""
        items = self._query(key, ScanIndexForward=False, Limit=n)
        return [i["Message"]["S"] for i in reversed(items)]

    def count(self, key: str) -> int:
        """Count the items with Select=COUNT queries."""
        total, params = 0, {"Select": "COUNT"}
        while True:
            page = self.client.query(
                TableName=self.table,
                KeyConditionExpression="SessionId = :k",
                ExpressionAttributeValues={":k": {"S": key}},
                **params,
            )
            total += page["Count"]
            if "LastEvaluatedKey" not in page:
                return total
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def delete_last(self, key: str) -> str | None:
        """Query the last item and delete it."""
        items = self._query(key, ScanIndexForward=False, Limit=1)
        if not items:
            return None
        self.client.delete_item(
            TableName=self.table, Key={"SessionId": items[0]["SessionId"], "Seq": items[0]["Seq"]}
        )
        self.next[key] = int(items[0]["Seq"]["N"])
        return str(items[0]["Message"]["S"])

    def delete(self, key: str) -> None:
        """Query every key of the conversation and delete them in batches."""
        keys = [{"SessionId": i["SessionId"], "Seq": i["Seq"]} for i in self._query(key)]
        requests = [{"DeleteRequest": {"Key": k}} for k in keys]
        for start in range(0, len(requests), 25):
            self.client.batch_write_item(RequestItems={self.table: requests[start : start + 25]})
        self.next.pop(key, None)

    def close(self) -> None:
        """Close the client."""
        self.client.close()


LLAMA_INDEX_DYNAMODB = """
import uuid
import boto3
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore

def make_store(url):
    credentials = {"region_name": "us-east-1", "aws_access_key_id": "bench",
                   "aws_secret_access_key": "bench"}
    table = f"bench-llama-index-{uuid.uuid4().hex[:8]}"
    boto3.client("dynamodb", endpoint_url=url, **credentials).create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "SessionId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "SessionId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return DynamoDBChatStore(table_name=table, resource_kwargs={"endpoint_url": url}, **credentials)
"""

# The long conversation: 20,000 messages at full scale (2,000 at BENCH_SCALE=0.1).
_LONG = 20_000
# LlamaIndex's store keeps a conversation in one item: from roughly 1,300 of the bench's
# messages on, it cannot even be filled, so runs with longer conversations leave it out.
_LLAMA_INDEX_HOLDS = 1_000

BENCH = Backend(
    title="DynamoDBChatStore (moto server; one item per message plus a meta item)",
    server=lambda: service(
        "CHAT_STORE_TEST_DYNAMODB_URL", start_moto, lambda s: f"http://127.0.0.1:{s.port}"
    ),
    ours=_ours,
    raw=RawBoto3,
    long_conversation=_LONG,
    # The catalog (once the store keeps one) on an emulator: 10,000 conversations, not 100,000.
    largest_catalog=10_000,
    reference=Reference(
        requirements=["llama-index-storage-chat-store-dynamodb==0.6.0"],
        source=LLAMA_INDEX_DYNAMODB,
    ),
    reference_holds=_LLAMA_INDEX_HOLDS,
    notes=[
        "ours: an append is one TransactWriteItems (meta update conditioned on the version the "
        "store last saw + put; GetItem(meta) first only when it has not seen the "
        "conversation); get_messages(offset=-20) and whole reads of up to 25 messages are one "
        "BatchGetItem of the meta item and the items it last saw, longer ones GetItem(meta) + "
        "Query; count is GetItem(meta). All reads are strongly consistent.",
        "raw: PutItem with a sequence number kept in the benchmark process (not safe with two "
        "writers); last 20 is one Query (ScanIndexForward=False, Limit=20); count is a "
        "Select=COUNT Query over the whole conversation.",
        "LlamaIndex: one item per conversation, read and rewritten whole (PutItem) on every "
        "append; it cannot hold a conversation over 400 KB (about 1,300 of these messages), "
        "so runs with longer conversations (BENCH_SCALE above 0.05) leave it out.",
        "moto evaluates a Query by scanning every item of the table in Python (this run's "
        "table holds every conversation length at once), so Query-based reads of ours and the "
        "raw floor grow with the table here; DynamoDB serves them by key range.",
    ],
)
