"""The fast codec: messages of the common shape, written and read in one cheap pass.

Almost every stored message is a role, plain-JSON ``additional_kwargs`` and text blocks.
For those, :func:`fast_json` writes with the C JSON encoder, and :func:`fast_message` reads
with a pydantic-core validator of that shape alone, in both modes. pydantic's serializer and
the models' own validation cost two to three times that (LlamaIndex's union of every block
type, its Python validators and serializers), and every backend reads and writes through
here. Each function returns ``None`` for anything it cannot do exactly as the models would
(byte for byte when writing; the same model, fields set included, when reading), and the
caller then takes the models' own path, which also raises the errors. The differential tests
in ``test_core_codec.py`` hold both paths to the same results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from pydantic_core import CoreSchema, SchemaValidator, core_schema, from_json

from llama_index.storage.chat_store.core._mode import (
    LLAMA_INDEX,
    ChatMessage,
    MessageRole,
    TextBlock,
)

__all__ = [
    "fast_json",
    "fast_message",
    "legacy_content",
    "legacy_shape",
]


def legacy_content(value: Any) -> Any:
    """Read the pre-0.12.3 shape: ``content`` becomes ``blocks`` (it wins over both given).

    LlamaIndex's model reads ``content`` only in its constructor, not when validating stored
    data, so every parse goes through this first.
    """
    if type(value) is not dict:
        return value
    if value.get("additional_kwargs", ()) is None:  # some old writers stored null
        value = {**value, "additional_kwargs": {}}
    if "content" in value:
        value = dict(value)
        content = value.pop("content")
        if content is None:
            value["blocks"] = []
        elif isinstance(content, str):
            value["blocks"] = [{"block_type": "text", "text": content}]
        elif isinstance(content, list):
            value["blocks"] = content
        else:
            raise ValueError(f"content must be a str, a list of blocks or None, not {content!r}")
    return value


# Writing. pydantic writes compact JSON with non-ASCII as is and the same escapes as the C
# encoder's (short forms for \b \t \n \f \r, lowercase \u00XX for other controls, nothing else).
# It differs on floats in exponent form (1e-05 is written 0.00001), NaN and infinities (null),
# lone surrogates (an error), tuples (LlamaIndex leaves bytes in them unencoded), and nesting
# deeper than its recursion limit (about 250): all of those take the validating path.
_encode_str = json.encoder.encode_basestring


def _kwargs_encoder() -> Callable[[dict[str, Any]], str]:
    """Return a compact encoder; the C one built once (JSONEncoder.encode builds one a call)."""
    encoder = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    try:
        chunks = make(None, encoder.default, _encode_str, None, ":", ",", False, False, False)  # type: ignore[misc]
    except TypeError:  # no C encoder, or another signature
        return encoder.encode
    return lambda value: "".join(chunks(value, 0))


_encode_kwargs = _kwargs_encoder()
_ROLE_JSON = {role: f'{{"role":"{role.value}","additional_kwargs":' for role in MessageRole}
_TEXT_JSON = '{"block_type":"text","text":'
_ATOMS = frozenset({str, int, bool, type(None)})
_MAX_DEPTH = 64  # well below every recursion limit on the way (pydantic's, jiter's, ours)


def _plain_json(value: Any, depth: int) -> bool:
    """Whether ``value`` (a dict or list) is JSON that pydantic writes as the C encoder does."""
    if depth > _MAX_DEPTH:
        return False
    if type(value) is dict:
        for key in value:
            if type(key) is not str:
                return False
        items = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind in _ATOMS:
            continue
        if kind is float:
            if "e" in repr(item):  # exponent form (the encoder refuses NaN and infinities)
                return False
        elif (kind is not dict and kind is not list) or not _plain_json(item, depth + 1):
            return False
    return True


def fast_json(message: ChatMessage) -> str | None:
    """Return ``message.model_dump_json()`` for a message of the common shape, else ``None``."""
    if type(message) is not ChatMessage:
        return None
    fields = message.__dict__
    role = fields["role"]
    head = _ROLE_JSON.get(role) if type(role) is MessageRole else None
    if head is None:
        # Core's own model keeps a role it does not know as a plain string.
        if type(role) is not str or LLAMA_INDEX:
            return None
        head = '{"role":' + _encode_str(role) + ',"additional_kwargs":'
    kwargs = fields["additional_kwargs"]
    if type(kwargs) is not dict:
        return None
    if kwargs:
        if not _plain_json(kwargs, 0):
            return None
        try:
            head += _encode_kwargs(kwargs)
        except ValueError:  # an int beyond Python's digit limit
            return None
    else:
        head += "{}"
    blocks = fields["blocks"]
    if type(blocks) is not list:
        return None
    parts = []
    for block in blocks:
        if type(block) is not TextBlock:
            return None
        text = block.__dict__["text"]
        if type(text) is not str or block.__dict__["block_type"] != "text":
            return None
        parts.append(_TEXT_JSON + _encode_str(text) + "}")
    out = head + ',"blocks":[' + ",".join(parts) + "]}"
    if not out.isascii():
        try:
            out.encode()
        except UnicodeEncodeError:  # a lone surrogate: pydantic refuses it
            return None
    return out


# Reading: a validator of the common shape only, built from the classes in use, so pydantic-core
# parses and builds the message in one pass with no Python call (LlamaIndex's union of every
# block type and its model validator cost about three times that). Anything outside the shape
# fails it: another block type, a key the model would ignore, a role the model in use would
# not make a MessageRole, a null additional_kwargs. The parser is the one the validating path
# uses (the same limits, the same refusals), so what it accepts, validation reads alike.
def _model(cls: type[BaseModel], fields: dict[str, CoreSchema]) -> CoreSchema:
    return core_schema.model_schema(
        cls,
        core_schema.model_fields_schema(
            {name: core_schema.model_field(schema) for name, schema in fields.items()},
            extra_behavior="forbid",
        ),
        extra_behavior="forbid",
    )


_TEXT_BLOCK = _model(  # no default for block_type: the model's union of blocks requires it
    TextBlock,
    {"block_type": core_schema.literal_schema(["text"]), "text": core_schema.str_schema()},
)


def _validator(schema: CoreSchema, classes: tuple[type[BaseModel], ...]) -> SchemaValidator:
    """Build ``schema``'s own validator, not the models' validators pydantic-core would reuse.

    pydantic-core swaps a model schema of a class marked complete for that class's own
    validator, so the class is marked incomplete while this one is built (at import, a few
    microseconds). Nothing else reads the mark then: pydantic consults it only to build or
    rebuild a model.
    """
    marks = [cls.__dict__["__pydantic_complete__"] for cls in classes]
    for cls in classes:
        cls.__pydantic_complete__ = False
    try:
        return SchemaValidator(schema)
    finally:
        for cls, mark in zip(classes, marks, strict=True):
            cls.__pydantic_complete__ = mark


_COMMON_SHAPE = _validator(
    _model(
        ChatMessage,
        {
            "role": core_schema.with_default_schema(
                core_schema.enum_schema(MessageRole, list(MessageRole), sub_type="str"),
                default=MessageRole.USER,
            ),
            "additional_kwargs": core_schema.with_default_schema(
                core_schema.dict_schema(core_schema.str_schema(), core_schema.any_schema()),
                default_factory=dict,
            ),
            "blocks": core_schema.with_default_schema(
                core_schema.list_schema(_TEXT_BLOCK), default_factory=list
            ),
        },
    ),
    (ChatMessage, TextBlock),
)
_LEGACY = {str: '"content"', bytes: b'"content"'}
# The first '"content"' (a legacy message) or block that is not text; None for the common shape.
_MARKS = '"(?:(content")|block_type":"(?!text"))'
_MARK: dict[type, Callable[[Any], re.Match[Any] | None]] = {
    str: re.compile(_MARKS).search,
    bytes: re.compile(_MARKS.encode()).search,
}


def legacy_shape(data: str | bytes | bytearray) -> bool:
    """Whether ``data`` may be of the legacy shape (it holds ``"content"`` anywhere).

    json.dumps and pydantic write keys as they are, so data without it is of the current shape.
    """
    return _LEGACY[str if type(data) is str else bytes] in data  # type: ignore[operator]


def fast_message(data: str | bytes | bytearray) -> ChatMessage | None:
    """Return the message ``data`` holds if it is of the common shape, else ``None``.

    The result is what validation would have built: equal, the same types, the same fields
    set (the keys given), defaults for fields not given. The legacy ``content`` shape is
    read too.
    """
    # A block of another type fails the validator only after it has parsed everything, and
    # its error costs as much as the parse: look for one first, in the same pass as for the
    # legacy shape (text may fool this either way, which costs time, never correctness).
    mark = _MARK[str if type(data) is str else bytes](data)
    try:
        if mark is None:
            message: ChatMessage = _COMMON_SHAPE.validate_json(data)
        elif mark[1]:
            message = _COMMON_SHAPE.validate_python(legacy_content(from_json(data)))
        else:
            return None
    except ValueError:  # ValidationError too; legacy_content's own error
        return None
    # LlamaIndex's model validator turns "images" into image blocks.
    return None if "images" in message.additional_kwargs else message
