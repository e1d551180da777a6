"""The message model reads and writes LlamaIndex's JSON byte for byte."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from llama_index.storage.chat_store.core import (
    ChatMessage,
    CorruptDataError,
    ImageBlock,
    InvalidMessageError,
    MessageRole,
    SerializationError,
    TextBlock,
    coerce_message,
    coerce_messages,
    copy_message,
    message_from_json,
    message_to_json,
)
from llama_index.storage.chat_store.testing import every_block_type, tricky_messages
from llama_index.storage.chat_store.testing.services import ReferencePython

DATA = Path(__file__).parent / "data"
LLAMA_INDEX_LINES = DATA.joinpath("messages.jsonl").read_text(encoding="utf-8").split("\n")[:-1]


@pytest.mark.parametrize("line", LLAMA_INDEX_LINES, ids=range(len(LLAMA_INDEX_LINES)))
def test_llama_index_json_round_trips_byte_identically(line: str) -> None:
    assert message_to_json(message_from_json(line)) == line


def test_known_blocks_parse_into_their_classes() -> None:
    kinds = {
        type(block).__name__
        for line in LLAMA_INDEX_LINES
        for block in message_from_json(line).blocks
    }
    assert kinds == {
        "TextBlock", "ImageBlock", "AudioBlock", "VideoBlock", "DocumentBlock", "CachePoint",
        "CitableBlock", "CitationBlock", "ThinkingBlock", "ToolCallBlock",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("legacy", "blocks"),
    [
        ('{"role": "assistant", "content": "old style", "additional_kwargs": {}}',
         [{"block_type": "text", "text": "old style"}]),
        ('{"role": "assistant", "content": null, "additional_kwargs": {"tool_calls": [1]}}', []),
        ('{"role": "user", "content": [{"block_type": "text", "text": "x"}]}',
         [{"block_type": "text", "text": "x"}]),
        ('{"role": "user", "content": "wins", "blocks": [{"block_type": "text", "text": "loses"}]}',
         [{"block_type": "text", "text": "wins"}]),
        ('{"role": "user", "additional_kwargs": null}', []),
    ],
)  # fmt: skip
def test_legacy_content_shapes_load(legacy: str, blocks: list[dict[str, str]]) -> None:
    message = message_from_json(legacy)
    assert json.loads(message_to_json(message))["blocks"] == blocks


def test_unknown_roles_and_blocks_survive() -> None:
    line = (
        '{"role":"critic","additional_kwargs":{},"blocks":[{"block_type":"hologram","z":[1,2.5]},'
        '{"block_type":"text","text":"t","future":true},{"block_type":"image","image":42}]}'
    )
    message = message_from_json(line)
    assert message.role == "critic"
    assert all(isinstance(b, dict) for b in message.blocks)
    assert message_to_json(message) == line


def test_content_property_and_constructor() -> None:
    message = ChatMessage(role="user", content="a")
    message.blocks.append(TextBlock(text="b"))
    assert message.content == "a\nb"
    assert ChatMessage(role="user").content is None
    assert message.role is MessageRole.USER
    message.content = "c"
    assert message.content == "c"
    assert str(message) == "user: c"


def test_payloads_are_kept() -> None:
    message = ChatMessage(
        additional_kwargs={"b": b"\x00\xff", "nan": math.nan, "f": 0.1, "big": 10**20},
        blocks=[ImageBlock(image=b"\x00\x01raw"), TextBlock(text="x")],
    )
    data = json.loads(message_to_json(message))
    assert data["additional_kwargs"] == {"b": "AP8=", "nan": None, "f": 0.1, "big": 10**20}
    assert data["blocks"][0]["image"] == "AAFyYXc="


def test_unserializable_kwargs_raise_serialization_error() -> None:
    with pytest.raises(SerializationError):
        message_to_json(ChatMessage(content="x", additional_kwargs={"o": object()}))


@pytest.mark.parametrize("bad", ["", "not json", "[]", '{"role": "user", "blocks": 5}', '"str"'])
def test_corrupt_json_raises_corrupt_data_error(bad: str) -> None:
    with pytest.raises(CorruptDataError, match="'k' position 3") as caught:
        message_from_json(bad, key="k", position=3)
    assert (caught.value.key, caught.value.position, caught.value.data) == ("k", 3, bad)


def test_coerce_accepts_messages_and_dicts_and_copies() -> None:
    original = ChatMessage(content="x", additional_kwargs={"l": [1]})
    copy = coerce_message(original)
    copy.additional_kwargs["l"].append(2)
    assert original.additional_kwargs == {"l": [1]}
    assert coerce_message({"role": "user", "content": "d"}).content == "d"
    with pytest.raises(InvalidMessageError):
        coerce_message("text")
    with pytest.raises(InvalidMessageError):
        coerce_message({"role": "user", "blocks": 5})
    with pytest.raises(InvalidMessageError):
        coerce_messages(ChatMessage(content="single"))  # type: ignore[arg-type]


def test_coerce_without_copy_checks_but_does_not_copy() -> None:
    original = ChatMessage(content="x", additional_kwargs={"l": [1]})
    assert coerce_message(original, copy=False) is original
    converted = coerce_message({"role": "user", "content": "d"}, copy=False)
    assert converted.content == "d"
    with pytest.raises(InvalidMessageError):
        coerce_message("text", copy=False)


def test_llama_index_reads_what_we_write(
    llama_index_reference: Callable[[Sequence[str]], ReferencePython],
) -> None:
    """Our JSON of every block type and payload parses in llama-index-core and comes back equal,
    except for fields LlamaIndex fills in at construction (mimetypes we left unset).
    Unknown block types are excluded: LlamaIndex rejects them."""
    ours = [message_to_json(m) for m in every_block_type() + tricky_messages()[:-1]]
    ours += LLAMA_INDEX_LINES
    script = (
        "import json, sys\n"
        "from llama_index.core.base.llms.types import ChatMessage\n"
        "lines = json.load(sys.stdin)\n"
        "print(json.dumps([ChatMessage.model_validate_json(l).model_dump_json() for l in lines]))\n"
    )
    reference = llama_index_reference([])
    done = subprocess.run(
        [str(reference.python), "-c", script], input=json.dumps(ours), capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    for mine, theirs in zip(ours, json.loads(done.stdout), strict=True):
        assert _without_filled_in(json.loads(mine), json.loads(theirs)) == json.loads(mine)


def _without_filled_in(mine: Any, theirs: Any) -> Any:
    """Drop from ``theirs`` what LlamaIndex derived where ``mine`` had None."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        return {
            k: (None if mine.get(k) is None else _without_filled_in(mine.get(k), v))
            for k, v in theirs.items()
        }
    if isinstance(mine, list) and isinstance(theirs, list):
        return [_without_filled_in(a, b) for a, b in zip(mine, theirs, strict=False)]
    return theirs


def _scribble(value: Any) -> None:
    """Change every container reachable from ``value``, in place."""
    if isinstance(value, BaseModel):
        for item in vars(value).values():
            _scribble(item)
    elif isinstance(value, dict):
        for item in list(value.values()):
            _scribble(item)
        value["scribbled"] = True
    elif isinstance(value, list):
        for item in value:
            _scribble(item)
        value.append("scribbled")
    elif isinstance(value, set):
        value.add("scribbled")


def test_copy_message_is_a_deep_copy_of_every_shape() -> None:
    odd = ChatMessage(content="x", additional_kwargs={"t": (1, [2]), "s": {3}, "n": {"l": [[4]]}})
    for original in [*every_block_type(), *tricky_messages(), odd]:
        before = original.model_dump_json()
        copied = copy_message(original)
        assert copied == original
        assert copied.__pydantic_fields_set__ == original.__pydantic_fields_set__
        _scribble(copied)
        assert original.model_dump_json() == before
