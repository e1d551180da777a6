"""The fast codec writes and reads exactly what pydantic's serializer and validation do.

Differential tests: a seeded corpus of generated messages and JSON lines (hostile text, every
block type, nested, float-heavy and broken payloads) goes through the fast path and through
pydantic's, in the mode this environment runs (the test runs cover both). Every fast result
must be identical; wherever pydantic refuses, the fast path must decline.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from llama_index.storage.chat_store.core import (
    ChatMessage,
    CorruptDataError,
    MessageRole,
    SerializationError,
    TextBlock,
    message_from_json,
    message_to_json,
)
from llama_index.storage.chat_store.core._codec import fast_json, fast_message
from llama_index.storage.chat_store.core.messages import (
    _dumped_json,
    _validated_message,
    messages_from_json,
)
from llama_index.storage.chat_store.testing import every_block_type, tricky_messages
from llama_index.storage.chat_store.testing.samples import LLAMA_INDEX_INSTALLED

SEED = 20261206
HOSTILE = [
    "".join(map(chr, range(32))),
    "quotes ' \" \\ \\\\ \\u0000 \\ud800 </script>",
    "\x7f \u0080 \u009f \u00a0 \u00ad \u2028 \u2029 \ufeff \ufffe \uffff",
    "ünïcödé 日本語 😀 👩‍👩‍👧 \U0010ffff",
    "",
    " ",
    "content",
    '"content"',
    '{"block_type":"image"}',
    "\ud800",
    "a\udfffb",
    "\ud83d\ude00",
]
FLOATS = [
    0.0,
    -0.0,
    0.1,
    1.5,
    1e-4,
    1e-5,
    1.2345e-7,
    5e-324,
    1e15,
    1e16,
    123456789012345.6,
    1.7976931348623157e308,
    float("nan"),
    float("inf"),
    float("-inf"),
]
# Around the fast encoder's limit (64) and pydantic's parser (~200) and serializer (~254) limits.
DEPTHS = [60, 63, 64, 65, 120, 197, 198, 199, 200, 252, 253, 254, 255, 256]
INTS = [0, -1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30, True, False]


def _text(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(HOSTILE)
    return "".join(
        chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x110000))))
        for _ in range(rng.randrange(12))
    )


def _float(rng: random.Random) -> float:
    if rng.random() < 0.5:
        return rng.choice(FLOATS)
    return rng.uniform(-1, 1) * 10.0 ** rng.randrange(-330, 309)


def _value(rng: random.Random, depth: int) -> Any:
    pick = rng.random()
    if depth < 4 and pick < 0.2:
        return {_text(rng): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if depth < 4 and pick < 0.35:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick < 0.55:
        return _text(rng)
    if pick < 0.7:
        return _float(rng)
    if pick < 0.85:
        return rng.choice(INTS)
    if pick < 0.9:
        return None
    if pick < 0.95:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    return (rng.choice(INTS), b"\x00\xff")


def _nested(depth: int) -> Any:
    value: Any = []
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def _kwargs(rng: random.Random) -> dict[str, Any]:
    pick = rng.random()
    if pick < 0.35:
        return {}
    if pick < 0.45:
        return {
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
            ]
        }
    if pick < 0.5:
        return {"deep": _nested(rng.choice(DEPTHS))}
    return {_text(rng): _value(rng, 0) for _ in range(rng.randrange(1, 4))}


def _blocks(rng: random.Random) -> list[Any]:
    others = [block for message in every_block_type() for block in message.blocks]
    blocks: list[Any] = [TextBlock(text=_text(rng)) for _ in range(rng.randrange(4))]
    if rng.random() < 0.15:
        blocks.insert(rng.randrange(len(blocks) + 1), rng.choice(others))
    return blocks


def generated_messages(count: int) -> Iterator[ChatMessage]:
    """Yield ``count`` messages: mostly the common shape, with every awkward value in it."""
    rng = random.Random(SEED)
    roles = [*MessageRole, *(role.value for role in MessageRole)]
    for _ in range(count):
        try:
            message = ChatMessage(
                role=rng.choice(roles), additional_kwargs=_kwargs(rng), blocks=_blocks(rng)
            )
        except ValueError:  # LlamaIndex refuses some generated payloads at construction
            continue
        yield message
    yield from every_block_type()
    yield from tricky_messages()


def _slow_json(message: ChatMessage) -> str | type[Exception]:
    try:
        return _dumped_json(message)
    except SerializationError:
        return SerializationError


def test_fast_json_writes_byte_for_byte_what_pydantic_writes() -> None:
    """fast_json(m) is model_dump_json() of m, or None where pydantic differs or refuses.

    If this fails: the fast encoder accepts a value pydantic writes differently (a float
    form, an escape, a nesting limit); make it decline that value.
    """
    fast_count = 0
    for message in generated_messages(3000):
        fast = fast_json(message)
        slow = _slow_json(message)
        if fast is not None:
            fast_count += 1
            assert fast == slow, repr(message)
        written: str | type[Exception]
        try:
            written = message_to_json(message)
        except SerializationError:
            written = SerializationError
        assert written == slow
    assert fast_count > 1000, "the fast encoder declined the common shape"


def _json_lines() -> Iterator[str]:
    """JSON lines: what pydantic writes for the corpus, and hand-made variants of the shape."""
    for message in generated_messages(3000):
        slow = _slow_json(message)
        if isinstance(slow, str):
            yield slow
            yield json.dumps(json.loads(slow))  # spaced, \\u escapes (LlamaIndex before 0.14.24)
    yield from VARIANTS
    for depth in (60, 61, 62, 63, 64, 65, 125, 126, 127, 128, 129, 196, 197, 198, 199, 200, 201):
        nested = json.dumps(_nested(depth))
        yield f'{{"role":"user","additional_kwargs":{{"v":{nested}}},"blocks":[]}}'


VARIANTS = [
    '{"role":"user","additional_kwargs":{},"blocks":[{"block_type":"text","text":"hi"}]}',
    '{"blocks":[{"block_type":"text","text":"hi"}]}',
    '{"role":"assistant"}',
    "{}",
    '{"role":"user","additional_kwargs":null,"blocks":[]}',
    '{"role":"user","blocks":[{"text":"no type"}]}',
    '{"role":"user","blocks":[{"block_type":"text","text":"t","future_field":1}]}',
    '{"role":"user","blocks":[{"block_type":"text","text":5}]}',
    '{"role":"user","blocks":[{"block_type":"text"}]}',
    '{"role":"user","blocks":{"block_type":"text","text":"t"}}',
    '{"role":"user","blocks":[{"block_type":"text","text":"a","text":"b"}]}',
    '{"role":"user","role":"tool","additional_kwargs":{"a":1,"a":2},"blocks":[]}',
    '{"role":"USER","blocks":[]}',
    '{"role":"critic","blocks":[]}',
    '{"role":null,"blocks":[]}',
    '{"role":1,"blocks":[]}',
    '{"role":"user","extra":1,"blocks":[]}',
    '{"role":"user","class_name":"ChatMessage","blocks":[]}',
    '{"role":"user","additional_kwargs":[],"blocks":[]}',
    '{"role":"user","additional_kwargs":{"images":[]},"blocks":[]}',
    '{"role":"user","additional_kwargs":{"images":null},"blocks":[]}',
    '{"role":"user","additional_kwargs":{"images":[{"url":"https://e.com/a.png"}]},"blocks":[]}',
    '{"role":"user","additional_kwargs":{"v":NaN,"w":Infinity,"x":-Infinity},"blocks":[]}',
    '{"role":"user","additional_kwargs":{"v":1e400,"w":-0,"x":-0.0,"y":1E5,"z":0.1e1},"blocks":[]}',
    '{"role":"user","additional_kwargs":{"v":123456789012345678901234567890},"blocks":[]}',
    '{"role":"user","additional_kwargs":{"v":"\\ud800"},"blocks":[]}',
    '{"role":"user","additional_kwargs":{"v":"\\udc00\\ud800"},"blocks":[]}',
    '{"role":"user","additional_kwargs":{"v":"\\ud83d\\ude00 \\u00e9 \\u2028"},"blocks":[]}',
    '{"role":"user","additional_kwargs":{},"blocks":[{"block_type":"text","text":"\\uD83D\\uDE00"}]}',
    '{"role":"user","additional_kwargs":{"\\ud800":1},"blocks":[]}',
    '{"role":"user","additional_kwargs":{"v":"\ud800"},"blocks":[]}',
    ' {"role":"user","blocks":[]}',
    '{"role":"user","blocks":[]} \n',
    '{"role":"user","blocks":[]}\x0b',
    '\ufeff{"role":"user","blocks":[]}',
    '{"role":"user","blocks":[]}{}',
    '{"role":"user","blocks":[],}',
    "[]",
    "null",
    '"text"',
    "",
    '{"role": "user", "content": "old style", "additional_kwargs": {}}',
    '{"role": "assistant", "content": null, "additional_kwargs": {"tool_calls": [{"id": "x"}]}}',
    '{"role":"user","content":"wins","blocks":[{"block_type":"text","text":"loses"}]}',
    '{"role":"user","content":[{"block_type":"text","text":"a"}],"additional_kwargs":null}',
    '{"role":"user","content":[{"block_type":"image","url":"https://e.com/a.png"}]}',
    '{"role":"user","content":5}',
    '{"role":"user","content":"\\ud800"}',
    '{"role":"user","content":"x","extra":1}',
    '{"role":"user","blocks":[{"block_type":"text","text":"content"}]}',
    '{"role":"user","blocks":[{"block_type":"image","url":"https://e.com/a.png"}]}',
    '{"role":"user","blocks":[{"block_type":"text","text":"a"},{"block_type":"hologram"}]}',
    '{"role":"user","blocks":[{"block_type": "text","text":"spaced"}]}',
]


def _outcome(data: str | bytes) -> ChatMessage | type[Exception]:
    try:
        return _validated_message(data, None, None)
    # Not only core's errors: LlamaIndex's "images" conversion raises its own on stored data.
    except Exception as exc:
        return type(exc)


def _assert_indistinguishable(fast: ChatMessage, slow: ChatMessage) -> None:
    assert type(fast) is type(slow)
    # NaN is not equal to itself: such messages are compared by their representation.
    nan = "nan" in repr(slow.additional_kwargs)
    assert fast == slow or nan
    assert list(fast.__dict__) == list(slow.__dict__)
    assert type(fast.role) is type(slow.role)
    assert fast.__pydantic_fields_set__ == slow.__pydantic_fields_set__
    assert (fast.__pydantic_extra__, fast.__pydantic_private__) == (
        slow.__pydantic_extra__,
        slow.__pydantic_private__,
    )
    assert repr(fast) == repr(slow)
    assert repr(fast.model_dump()) == repr(slow.model_dump())
    assert fast.model_dump() == slow.model_dump() or nan
    assert message_to_json(fast) == _dumped_json(slow)
    for a, b in zip(fast.blocks, slow.blocks, strict=True):
        assert type(a) is type(b)
        if not isinstance(b, BaseModel):  # core's model keeps an unknown block as a dict
            continue
        assert a.__pydantic_fields_set__ == b.__pydantic_fields_set__
        assert (a.__pydantic_extra__, a.__pydantic_private__) == (
            b.__pydantic_extra__,
            b.__pydantic_private__,
        )


def _inputs(line: str) -> Iterator[str | bytes]:
    yield line
    try:
        yield line.encode()
    except UnicodeEncodeError:
        yield line.encode("utf-8", "surrogatepass")  # bytes no UTF-8 decoder accepts


def test_fast_message_builds_what_validation_builds() -> None:
    """fast_message(d) is indistinguishable from the validated message, or None.

    If this fails: the fast reader accepts data validation reads differently or refuses (a
    parser limit, a default, a field set, a block validation would not make a TextBlock);
    make its validator or its checks decline that data.
    """
    fast_count = 0
    for line in _json_lines():
        for data in _inputs(line):
            fast = fast_message(data)
            slow = _outcome(data)
            if fast is not None:
                fast_count += 1
                assert isinstance(slow, ChatMessage), data
                _assert_indistinguishable(fast, slow)
            try:
                read: ChatMessage | type[Exception] = message_from_json(data)
            except Exception as exc:  # as in _outcome
                read = type(exc)
            if isinstance(slow, ChatMessage):
                assert isinstance(read, ChatMessage)
                _assert_indistinguishable(read, slow)
            else:
                assert read is slow, data
    assert fast_count > 2000, "the fast reader declined the common shape"


def test_common_shapes_take_the_fast_paths() -> None:
    """Plain text messages, tool calls and the legacy shape never reach pydantic's slow paths.

    If this fails: a change made the fast paths decline the shapes nearly every message has,
    so every store reads and writes several times slower (results stay right).
    """
    tool_call = {"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}
    messages = [
        ChatMessage(role="user", content="hi ünï 😀"),
        ChatMessage(role="assistant", content=None, additional_kwargs=tool_call),
        ChatMessage(role="tool", content="42", additional_kwargs={"tool_call_id": "c1", "n": 1.5}),
    ]
    for message in messages:
        text = fast_json(message)
        assert text is not None
        assert fast_message(text) == message
        assert fast_message(text.encode()) == message
    legacy = '{"role": "assistant", "content": "old style", "additional_kwargs": {}}'
    assert fast_message(legacy) == ChatMessage(role="assistant", content="old style")


@pytest.mark.parametrize("count", [1, 100])
def test_messages_from_json_mixes_fast_and_validated_reads_in_order(count: int) -> None:
    """A read of mixed shapes returns every message in order, each as validation makes it.

    If this fails: the batch reader lost the position of a message the fast path declined.
    """
    lines = [message_to_json(m) for m in [*every_block_type(), *tricky_messages()]] * count
    read = messages_from_json([line.encode() for line in lines], key="k")
    assert [message_to_json(m) for m in read] == lines
    for message, line in zip(read, lines, strict=True):
        _assert_indistinguishable(message, _validated_message(line, None, None))


def test_messages_from_json_names_the_position_of_bad_data() -> None:
    """A corrupt item among fast-read ones is reported at its own position.

    If this fails: the batch reader reports the wrong position or lets the item through.
    """
    good = message_to_json(ChatMessage(role="user", content="ok"))
    with pytest.raises(CorruptDataError) as info:
        messages_from_json([good, good, "not json", good], key="k", start=10)
    assert info.value.position == 12


def test_building_the_fast_reader_leaves_the_models_complete() -> None:
    """The model classes stay marked complete after the fast reader is built at import.

    If this fails: pydantic would rebuild the classes' schemas (or LlamaIndex's) on use.
    """
    for cls in (ChatMessage, TextBlock):
        assert cls.__dict__["__pydantic_complete__"] is True
    assert ChatMessage(role="user", content="x").blocks[0].text == "x"
    assert ChatMessage.__module__.startswith("llama_index.core") == LLAMA_INDEX_INSTALLED
