"""Write a conversation with LlamaIndex's DynamoDBChatStore 0.6.0 and dump the raw item.

Run in the reference environment (llama-index-core 0.14.25, llama-index-storage-chat-store-
dynamodb 0.6.0) against a moto server:
``python generate_llama_index_item.py http://127.0.0.1:PORT DIR``. Writes
``llama_index_0_6_0_item.json`` (the raw item; Binary values as their text, the test turns them
back into bytes) and ``llama_index_0_6_0_item.expected.jsonl`` (LlamaIndex's JSON of each
message as written, which is what we must read back).
"""

import json
import sys

import boto3
from llama_index.core.base.llms.types import ImageBlock, TextBlock
from llama_index.core.llms import ChatMessage
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore

url = sys.argv[1]
credentials = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}
client = boto3.client("dynamodb", endpoint_url=url, **credentials)
client.create_table(
    TableName="sample",
    KeySchema=[{"AttributeName": "SessionId", "KeyType": "HASH"}],
    AttributeDefinitions=[{"AttributeName": "SessionId", "AttributeType": "S"}],
    BillingMode="PAY_PER_REQUEST",
)
store = DynamoDBChatStore(
    table_name="sample", resource_kwargs={"endpoint_url": url}, **credentials
)
messages = [
    ChatMessage(role="system", content="You are helpful."),
    ChatMessage(role="user", content="ünïcödé 😀", additional_kwargs={"n": 7, "b": b"\x01"}),
    ChatMessage(
        role="user",
        blocks=[TextBlock(text="look"), ImageBlock(image=b"\x89PNG", image_mimetype="image/png")],
    ),
]
for message in messages:
    store.add_message("user1", message)
item = client.get_item(TableName="sample", Key={"SessionId": {"S": "user1"}})
out = sys.argv[2]
with open(f"{out}/llama_index_0_6_0_item.json", "w", encoding="utf-8") as f:
    f.write(json.dumps({"Item": item["Item"]}, default=lambda b: b.decode(), ensure_ascii=False))
with open(f"{out}/llama_index_0_6_0_item.expected.jsonl", "w", encoding="utf-8") as f:
    f.writelines(m.model_dump_json() + "\n" for m in messages)
