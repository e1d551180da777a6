"""Both directions with LlamaIndex's own DynamoDBChatStore 0.6.0 on the same moto server."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from llama_index.storage.chat_store.core import ChatMessage, ImageBlock, message_to_json
from llama_index.storage.chat_store.testing.services import ReferencePython

LLAMA_INDEX_DYNAMODB = "llama-index-storage-chat-store-dynamodb==0.6.0"
DATA = Path(__file__).parent / "data"

_SETUP = """
import json, sys
from llama_index.core.llms import ChatMessage
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore
url, table = sys.argv[1], sys.argv[2]
store = DynamoDBChatStore(
    table_name=table, region_name="us-east-1", aws_access_key_id="testing",
    aws_secret_access_key=sys.argv[3], resource_kwargs={"endpoint_url": url},
)
"""


@pytest.fixture(scope="module")
def reference(
    llama_index_reference: Callable[[Sequence[str]], ReferencePython],
) -> ReferencePython:
    return llama_index_reference([LLAMA_INDEX_DYNAMODB])


def test_we_read_what_llama_index_wrote(reference: ReferencePython, moto: Any) -> None:
    ours = moto.store("llama_index")
    # Compared with the messages as LlamaIndex wrote them: its own read-back turns the int 3
    # into the string "3" (a Decimal leaking into additional_kwargs); ours gives 3.
    script = (
        _SETUP
        + """
written = {
    "u1": [ChatMessage(role="user", content="hello", additional_kwargs={"n": 3}),
           ChatMessage(role="assistant", content="ünï 😀", additional_kwargs={"b": b"\\x00\\x01"})],
    "u2": [ChatMessage(role="system", content="sys")],
}
for m in written["u1"]:
    store.add_message("u1", m)
store.set_messages("u2", written["u2"])
print(json.dumps({k: [m.model_dump_json() for m in v] for k, v in written.items()}))
"""
    )
    written = json.loads(reference.run(script, moto.url, ours.table_name, moto.secret))
    for key, lines in written.items():
        assert [message_to_json(m) for m in ours.get_messages(key)] == lines
    assert sorted(ours.get_keys()) == ["u1", "u2"]
    ours.add_message("u1", ChatMessage(content="ours"))
    assert ours.count_messages("u1") == 3


def test_we_read_llama_index_images(reference: ReferencePython, moto: Any) -> None:
    """LlamaIndex stores image bytes as Binary; it cannot read them back itself, we can."""
    ours = moto.store("llama_index")
    script = (
        _SETUP
        + """
from llama_index.core.base.llms.types import ImageBlock
image = ImageBlock(image=b"\\x89PNG", image_mimetype="image/png")
store.add_message("img", ChatMessage(role="user", blocks=[image]))
"""
    )
    reference.run(script, moto.url, ours.table_name, moto.secret)
    (message,) = ours.get_messages("img")
    block = message.blocks[0]
    assert isinstance(block, ImageBlock)
    assert block.image == b"iVBORw=="


def test_llama_index_reads_what_we_wrote(reference: ReferencePython, moto: Any) -> None:
    ours = moto.store("llama_index")
    messages = [
        ChatMessage(role="user", content="hi", additional_kwargs={"n": 3, "f": 2.5}),
        ChatMessage(
            role="assistant", content="ünï 😀", additional_kwargs={"tool_calls": [{"id": "c"}]}
        ),
        ChatMessage(
            role="user", blocks=[ImageBlock(image=b"\x89PNG\r\n", image_mimetype="image/png")]
        ),
    ]
    ours.set_messages("u1", messages[:1])
    ours.add_messages("u1", messages[1:])
    script = (
        _SETUP
        + """
got = store.get_messages("u1")
store.add_message("u1", ChatMessage(role="user", content="from llama-index"))
print(json.dumps([m.model_dump_json() for m in got]))
"""
    )
    seen = json.loads(reference.run(script, moto.url, ours.table_name, moto.secret))
    expected = [json.loads(message_to_json(m)) for m in messages]
    # LlamaIndex reads every DynamoDB number as a Decimal, which its JSON writes as a string:
    # the values are ours, the types are its own read-back quirk.
    expected[0]["additional_kwargs"] = {"n": "3", "f": "2.5"}
    assert [json.loads(line) for line in seen] == expected
    # LlamaIndex rewrote the item (put_item) without our version attribute: we still append.
    ours.add_message("u1", ChatMessage(content="ours again"))
    assert [m.content for m in ours.get_messages("u1")][-2:] == ["from llama-index", "ours again"]


def test_checked_in_sample_reads(moto: Any) -> None:
    """A real item written by LlamaIndex 0.6.0 (tests/data/generate_llama_index_item.py)."""
    ours = moto.store("llama_index")
    item = json.loads((DATA / "llama_index_0_6_0_item.json").read_text())["Item"]
    for value in item["History"]["L"]:
        for block in value["M"]["blocks"]["L"]:
            if "B" in block["M"].get("image", {}):
                block["M"]["image"]["B"] = block["M"]["image"]["B"].encode()
    moto.client().put_item(TableName=ours.table_name, Item=item)
    expected = (DATA / "llama_index_0_6_0_item.expected.jsonl").read_text().splitlines()
    assert [message_to_json(m) for m in ours.get_messages(item["SessionId"]["S"])] == expected
