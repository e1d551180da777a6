"""Messages the conformance suite writes and expects back unchanged."""

from __future__ import annotations

from importlib.util import find_spec

from llama_index.storage.chat_store.core import (
    AudioBlock,
    CachePoint,
    ChatMessage,
    CitableBlock,
    CitationBlock,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    VideoBlock,
    message_from_json,
    message_to_json,
)

__all__ = [
    "HOSTILE_KEYS",
    "LLAMA_INDEX_INSTALLED",
    "UNKNOWN_TYPES_JSON",
    "every_block_type",
    "jsons",
    "numbered",
    "texts",
    "tricky_messages",
    "unknown_types_message",
]

LLAMA_INDEX_INSTALLED = find_spec("llama_index.core") is not None
"""Whether core runs on LlamaIndex's message classes (``llama-index-core`` is installed)."""

UNKNOWN_TYPES_JSON = (
    '{"role":"critic","additional_kwargs":{},"blocks":[{"block_type":"hologram",'
    '"frames":[1,2.5,{"z":null}]},{"block_type":"text","text":"t","future_field":1}]}'
)
"""A message of a later version: a role and a block type this one does not know."""

HOSTILE_KEYS = [
    "user/1",
    "a#b?c=d&e",
    'it\'s "quoted"',
    "nobody' OR '1'='1",
    "x; DROP TABLE chatstore; --",
    "PartitionKey eq 'x' or true",
    "spaces  and\ttabs",
    "line\nbreak\r\n",
    "back\\slash",
    "*",
    "{hash}tag",
    "]]]=== lua",
    "%s %d {0}",
    "emoji 😀 ünïcödé 日本語",
    "\u202e right-to-left",
    "..",
    "-",
    " leading space",
]
"""Keys that break naive quoting in SQL, OData, Lua, Redis patterns or URLs."""


def texts(messages: list[ChatMessage] | None) -> list[str | None]:
    """The contents of ``messages`` (``None`` reads as no messages)."""
    return [m.content for m in messages or []]


def jsons(messages: list[ChatMessage] | None) -> list[str]:
    """The stored JSON of each of ``messages``: equal lists mean equal messages."""
    return [message_to_json(m) for m in messages or []]


def numbered(n: int, prefix: str = "m", start: int = 0) -> list[ChatMessage]:
    """Return ``n`` short user messages whose text is ``f"{prefix}{i}"``."""
    return [ChatMessage(role="user", content=f"{prefix}{i}") for i in range(start, start + n)]


def every_block_type() -> list[ChatMessage]:
    """Return one message per block type, with binary payloads where a block has them."""
    return [
        ChatMessage(role="user", blocks=[TextBlock(text="a"), TextBlock(text="b")]),
        ChatMessage(
            role="user", blocks=[ImageBlock(url="https://e.com/a.png", image_mimetype="image/png")]
        ),
        ChatMessage(
            role="user", blocks=[ImageBlock(image=b"\x89PNG\r\n\x1a\n\x00\xff", detail="high")]
        ),
        ChatMessage(role="user", blocks=[AudioBlock(audio=b"RIFF\x00\x01\x02WAVE", format="wav")]),
        ChatMessage(role="user", blocks=[VideoBlock(url="https://e.com/v.mp4", fps=30)]),
        ChatMessage(role="user", blocks=[DocumentBlock(data=b"%PDF-1.4\x00", title="t")]),
        ChatMessage(
            role="user", blocks=[CachePoint(cache_control={"type": "ephemeral", "ttl": "5m"})]
        ),
        ChatMessage(
            role="user",
            blocks=[CitableBlock(title="T", source="S", content=[TextBlock(text="c")])],
        ),
        ChatMessage(
            role="assistant",
            blocks=[
                CitationBlock(
                    cited_content=TextBlock(text="cc"),
                    source="S",
                    title="T",
                    additional_location_info={"start": 1},
                )
            ],
        ),
        ChatMessage(role="assistant", blocks=[ThinkingBlock(content="hmm", num_tokens=3)]),
        ChatMessage(
            role="assistant",
            blocks=[ToolCallBlock(tool_call_id="c1", tool_name="f", tool_kwargs={"a": [1, 2.5]})],
        ),
    ]


def tricky_messages() -> list[ChatMessage]:
    """Return messages with payloads that naive storage mangles.

    Without ``llama-index-core``, also a message with a role and a block type this version
    does not know (:func:`unknown_types_message`); LlamaIndex's model cannot hold one.
    """
    later = [] if LLAMA_INDEX_INSTALLED else [unknown_types_message()]
    return [
        ChatMessage(role=MessageRole.SYSTEM, content="ünïcödé ✓ 日本語 😀 \u2028 \x7f"),
        ChatMessage(role="user", content="quotes ' \" \\ </script> \x00 NUL and \x1b escape"),
        ChatMessage(role="user", content=""),
        ChatMessage(role="assistant", content=None),
        ChatMessage(
            role="assistant",
            content=None,
            additional_kwargs={
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"x": [1, {"y": null}]}'},
                    },
                ],
                "floats": [0.1, 1e-300, 1e300, -0.0, 123456789.123456789],
                "ints": [0, -1, 2**53 + 1, 10**20],
                "nested": {"a": {"b": {"c": [True, False, None]}}},
                "raw": b"\x00\x01\xfe\xff",
            },
        ),
        ChatMessage(role="tool", content="result", additional_kwargs={"tool_call_id": "call_1"}),
        *later,
    ]


def unknown_types_message() -> ChatMessage:
    """Return core's own model of a message with an unknown role and block type.

    Only without ``llama-index-core``: LlamaIndex's ``ChatMessage`` rejects it.
    """
    return message_from_json(UNKNOWN_TYPES_JSON)
