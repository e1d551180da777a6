"""The message model reads and writes LlamaIndex's JSON byte for byte."""

from __future__ import annotations

import gc
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
    message_from_json,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import (
    coerce_message,
    coerce_messages,
    copy_message,
    copy_messages,
    corrupt_data_remedy,
    messages_removed,
)
from llama_index.storage.chat_store.core.messages import collector_paused
from llama_index.storage.chat_store.testing import every_block_type, tricky_messages
from llama_index.storage.chat_store.testing.samples import (
    LLAMA_INDEX_INSTALLED,
    UNKNOWN_TYPES_JSON,
)
from llama_index.storage.chat_store.testing.services import ReferencePython

DATA = Path(__file__).parent / "data"
standalone_only = pytest.mark.skipif(
    LLAMA_INDEX_INSTALLED,
    reason="core's own model only: llama-index-core is installed here (the stand-alone "
    "test environment runs this)",
)
llama_index_only = pytest.mark.skipif(
    not LLAMA_INDEX_INSTALLED,
    reason="LlamaIndex's model only: llama-index-core is not installed here (the llama-index "
    "test environment runs this)",
)
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
    for data in (legacy, legacy.encode()):
        message = message_from_json(data)
        assert json.loads(message_to_json(message))["blocks"] == blocks


def test_current_messages_naming_content_read_the_same_by_either_reader() -> None:
    """Current-shape data mentioning '"content"' (a text, a thinking block) takes the legacy
    reader, data without it the fast one: both give the message as written.

    If this fails: the fast path misreads data, or data with '"content"' in it is misread.
    """
    lines = [
        '{"role":"user","additional_kwargs":{},"blocks":'
        '[{"block_type":"text","text":"say \\"content\\""}]}',
        '{"role":"user","additional_kwargs":{"content":1},"blocks":[]}',
        *LLAMA_INDEX_LINES,
    ]
    for line in lines:
        for data in (line, line.encode()):
            assert message_to_json(message_from_json(data)) == line


@standalone_only
def test_unknown_roles_and_blocks_survive() -> None:
    line = (
        '{"role":"critic","additional_kwargs":{},"blocks":[{"block_type":"hologram","z":[1,2.5]},'
        '{"block_type":"text","text":"t","future":true},{"block_type":"image","image":42}]}'
    )
    message = message_from_json(line)
    assert message.role == "critic"
    assert all(isinstance(b, dict) for b in message.blocks)
    assert message_to_json(message) == line


@llama_index_only
def test_unknown_roles_and_blocks_raise_serialization_error_naming_key_and_position() -> None:
    with pytest.raises(SerializationError, match=r"'k' position 4.*'critic'"):
        message_from_json(UNKNOWN_TYPES_JSON, key="k", position=4)


@llama_index_only
def test_a_message_llama_index_cannot_hold_is_said_intact_on_read_removed_on_removal() -> None:
    """A read's SerializationError says the data is intact; a removal's says it was removed.

    Both hold key, position and the data as stored. If this fails: a store that removes such
    a message before parsing the reply (one script or statement) claims it is still stored.
    """
    with pytest.raises(SerializationError) as read:
        message_from_json(UNKNOWN_TYPES_JSON, key="k", position=4)
    assert "intact" in str(read.value)
    assert (read.value.key, read.value.position, read.value.data) == ("k", 4, UNKNOWN_TYPES_JSON)
    good = message_to_json(ChatMessage(content="ok"))
    with pytest.raises(SerializationError) as removal:
        messages_removed("k", [(3, good), (4, UNKNOWN_TYPES_JSON)], storage="Somewhere")
    text = str(removal.value)
    assert "intact" not in text
    assert "'k' position 4" in text
    assert "removed from Somewhere" in text
    assert (removal.value.key, removal.value.position) == ("k", 4)
    assert removal.value.data == UNKNOWN_TYPES_JSON


def test_corrupt_data_says_how_to_remove_it_on_read_and_that_it_was_removed_on_removal() -> None:
    """Core builds both texts: a read's remedy, a removal's "removed" with the data kept.

    If this fails: backends would each word (or forget) these, as they once did.
    """
    bad = b'{"role": "user", "blocks": 42}'
    with pytest.raises(CorruptDataError) as read:
        message_from_json(bad, key="k", position=1)
    assert str(read.value).endswith(f"({corrupt_data_remedy('k')})")
    assert read.value.data == bad
    with pytest.raises(CorruptDataError) as removal:
        messages_removed("k", [(1, bad)], storage="Somewhere")
    assert corrupt_data_remedy("k") not in str(removal.value)
    assert "removed from Somewhere" in str(removal.value)
    assert (removal.value.key, removal.value.position, removal.value.data) == ("k", 1, bad)
    found = CorruptDataError("row 2 is missing", key="k", position=2)
    with pytest.raises(CorruptDataError, match="missing; removed from Somewhere") as missing:
        messages_removed("k", [(2, found)], storage="Somewhere")
    assert missing.value.data is None
    assert (
        messages_removed("k", [(0, message_to_json(ChatMessage(content="a")))], storage="S")[
            0
        ].content
        == "a"
    )


@llama_index_only
def test_messages_are_llama_index_classes() -> None:
    from llama_index.core.llms import ChatMessage as LlamaIndexChatMessage
    from llama_index.core.llms import MessageRole as LlamaIndexMessageRole

    message = message_from_json(LLAMA_INDEX_LINES[0])
    assert type(message) is LlamaIndexChatMessage
    assert MessageRole is LlamaIndexMessageRole
    assert message == LlamaIndexChatMessage.model_validate_json(LLAMA_INDEX_LINES[0])


def test_content_property_and_constructor() -> None:
    message = ChatMessage(role="user", content="a")
    message.blocks.append(TextBlock(text="b"))
    assert message.content == "a\nb"
    assert ChatMessage(role="user").content is None
    assert message.role is MessageRole.USER
    with pytest.raises(ValueError, match="blocks"):  # LlamaIndex's rule, in both modes
        message.content = "c"
    single = ChatMessage(role="user", content="a")
    single.content = "c"
    assert single.content == "c"
    assert str(single) == "user: c"


def test_payloads_are_kept() -> None:
    message = ChatMessage(
        additional_kwargs={"b": b"\x00\xff", "nan": math.nan, "f": 0.1, "big": 10**20},
        blocks=[ImageBlock(image=b"\x00\x01raw"), TextBlock(text="x")],
    )
    data = json.loads(message_to_json(message))
    assert data["additional_kwargs"] == {"b": "AP8=", "nan": None, "f": 0.1, "big": 10**20}
    assert data["blocks"][0]["image"] == "AAFyYXc="


@pytest.mark.skipif(not LLAMA_INDEX_INSTALLED, reason="LlamaIndex's validators only")
@pytest.mark.parametrize("images", ["[1]", '"x"', '[{"a": 1}]'])
def test_data_llama_index_validators_trip_on_is_corrupt_data_not_their_error(images: str) -> None:
    data = '{"role":"user","additional_kwargs":{"images":' + images + '},"blocks":[]}'
    with pytest.raises(CorruptDataError, match="at key 'k' position 3"):
        message_from_json(data, key="k", position=3)


def test_a_message_nested_past_what_reads_back_is_refused_on_write() -> None:
    def nested(depth: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(depth):
            value = {"a": value}
        return value

    fine = ChatMessage(content="x", additional_kwargs=nested(150))
    assert message_from_json(message_to_json(fine)) == fine
    with pytest.raises(SerializationError, match="would not read back"):
        message_to_json(ChatMessage(content="x", additional_kwargs=nested(230)))


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


def test_coerce_without_copy_returns_our_message_and_still_converts() -> None:
    # For stores that serialize at once: no copy of our own messages, the same checks.
    original = ChatMessage(content="x")
    assert coerce_message(original, copy=False) is original
    assert coerce_messages([original], copy=False)[0] is original
    assert coerce_message({"role": "user", "content": "d"}, copy=False).content == "d"
    with pytest.raises(InvalidMessageError):
        coerce_message("text", copy=False)
    with pytest.raises(InvalidMessageError):
        coerce_messages(original, copy=False)  # type: ignore[arg-type]


def test_llama_index_reads_what_we_write(
    llama_index_reference: Callable[[Sequence[str]], ReferencePython],
) -> None:
    """Our JSON of every block type and payload parses in llama-index-core and comes back equal,
    except for fields LlamaIndex fills in at construction (mimetypes we left unset).
    Unknown block types are excluded: LlamaIndex rejects them."""
    ours = [message_to_json(m) for m in every_block_type() + tricky_messages()]
    ours = [line for line in ours if line != UNKNOWN_TYPES_JSON]
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


@pytest.mark.parametrize("collector", ["enabled", "disabled"])
def test_copy_messages_copies_a_long_conversation_and_leaves_the_collector_as_it_was(
    collector: str,
) -> None:
    """copy_messages pauses the cyclic collector for a long copy and restores it exactly.

    If this fails: the pause is not undone (or undoes a caller's own gc.disable()).
    """
    originals = [*every_block_type(), *tricky_messages()] * 20  # above the pause threshold
    before = [m.model_dump_json() for m in originals]
    was_enabled = gc.isenabled()
    (gc.enable if collector == "enabled" else gc.disable)()
    try:
        copies = copy_messages(iter(originals))
        assert gc.isenabled() is (collector == "enabled")
    finally:
        (gc.enable if was_enabled else gc.disable)()
    assert copies == originals
    assert all(c is not o for c, o in zip(copies, originals, strict=True))
    for copied in copies:
        _scribble(copied)
    assert [m.model_dump_json() for m in originals] == before


@pytest.mark.parametrize("count", [10, 10_000])
def test_collector_paused_pauses_only_long_work_and_restores_the_collector(count: int) -> None:
    """collector_paused turns the collector off for many messages, back on after, even on error.

    If this fails: stores parsing a long conversation run with the collector on (three times
    slower), or leave it off after a parse raised (every later allocation pays for it).
    """
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        with collector_paused(count):
            assert gc.isenabled() is (count < 64)
        with pytest.raises(CorruptDataError), collector_paused(count):
            message_from_json("not json")
        assert gc.isenabled()
        gc.disable()  # a caller's own pause is left alone
        with collector_paused(count):
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        (gc.enable if was_enabled else gc.disable)()
