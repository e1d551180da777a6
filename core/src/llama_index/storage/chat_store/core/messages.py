"""Chat messages: the model in use, and the one way to serialize and parse them.

``ChatMessage``, ``MessageRole`` and the block classes are LlamaIndex's own when
``llama-index-core`` is installed, else core's wire-identical model (see
:mod:`llama_index.storage.chat_store.core._mode`). Every backend writes messages with
:func:`message_to_json` and reads them with :func:`message_from_json` (one parse per message,
straight into the model in use; the common shape, text blocks and plain JSON, through core's
fast codec, byte for byte and field for field what the models would do); nothing else in the
project serializes a message.

Compatibility rules (see the project's format reference):

* ``message_to_json(message_from_json(line)) == line`` for every line LlamaIndex writes.
* The legacy shape ``{"role", "content", "additional_kwargs"}`` is read in both modes.
* Without ``llama-index-core``, roles and block types this version does not know are kept as
  they are and written back unchanged. With it, such a stored message raises
  :class:`SerializationError` naming its key and position, and the stored data stays intact
  (unless a removal had already removed it: then the error says so and holds the data).
"""

from __future__ import annotations

import contextlib
import copy
import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from llama_index.storage.chat_store.core._codec import (
    fast_json,
    fast_message,
    legacy_content,
    legacy_shape,
)
from llama_index.storage.chat_store.core._mode import (
    LLAMA_INDEX,
    AudioBlock,
    CachePoint,
    ChatMessage,
    CitableBlock,
    CitationBlock,
    ContentBlock,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    VideoBlock,
)
from llama_index.storage.chat_store.core.errors import (
    _INTACT,
    CorruptDataError,
    InvalidMessageError,
    SerializationError,
    corrupt_data_remedy,
    removal_error,
)

__all__ = [
    "AudioBlock",
    "CachePoint",
    "ChatMessage",
    "CitableBlock",
    "CitationBlock",
    "ContentBlock",
    "DecodedMessage",
    "DocumentBlock",
    "ImageBlock",
    "MessageRole",
    "TextBlock",
    "ThinkingBlock",
    "ToolCallBlock",
    "VideoBlock",
    "coerce_message",
    "coerce_messages",
    "collector_paused",
    "copy_message",
    "copy_messages",
    "message_from_json",
    "message_to_json",
    "messages_from_json",
    "messages_removed",
]

_M = TypeVar("_M", bound=BaseModel)


DecodedMessage = Annotated[ChatMessage, BeforeValidator(legacy_content)]
"""The model in use, also reading the legacy ``content`` shape (for fields of stored data)."""

_DECODE: TypeAdapter[ChatMessage] = TypeAdapter(DecodedMessage)
_DECODE_CURRENT = ChatMessage.model_validate_json
"""The current shape, parsed by pydantic-core straight from JSON: 2-4x faster than through the
legacy reader, which needs the parsed dict in Python first."""


def message_to_json(message: ChatMessage) -> str:
    """Serialize a message to LlamaIndex's compact JSON.

    Raises:
        SerializationError: ``additional_kwargs`` holds a value JSON cannot carry.
    """
    fast = fast_json(message)  # the common shape, byte for byte what pydantic writes
    return _dumped_json(message) if fast is None else fast


def _dumped_json(message: ChatMessage) -> str:
    """:func:`message_to_json` through pydantic's serializer (any message).

    JSON of many objects and arrays may nest deeper than the reader's limit (about 200
    levels), which would store a message no read can return: such JSON is read back first.
    """
    try:
        data = message.model_dump_json()
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise SerializationError(f"cannot serialize message: {str(exc)[:300]}") from exc
    if data.count("{") + data.count("[") >= _READ_BACK_FROM:
        try:
            _validated_message(data, None, None)
        except (CorruptDataError, SerializationError) as exc:
            raise SerializationError(
                "cannot store this message: it would not read back (nested too deeply?): "
                f"{str(exc)[:200]}"
            ) from exc
    return data


_READ_BACK_FROM = 128  # fewer objects and arrays than this cannot nest past the reader's limit


def message_from_json(
    data: str | bytes | bytearray, *, key: str | None = None, position: int | None = None
) -> ChatMessage:
    """Parse one message written by this project or by any LlamaIndex version.

    Args:
        data: The message JSON.
        key: The conversation key it was read from, named in the error.
        position: Its position in the conversation, named in the error.

    Raises:
        CorruptDataError: The data is not a message. Names the key and position, says how
            to remove the conversation (when ``key`` is given) and holds ``data``.
        SerializationError: With ``llama-index-core`` installed, the data is a message that
            LlamaIndex's model cannot hold (an unknown role or block type); names the key,
            the position and what it cannot hold, says the stored data is intact, and holds
            ``data``. This call changes nothing stored; a removal that has already removed
            the data raises :func:`~.errors.removal_error` of it instead.
    """
    fast = fast_message(data)  # the common shape, built as validation would build it
    return _validated_message(data, key, position) if fast is None else fast


def _validated_message(
    data: str | bytes | bytearray, key: str | None, position: int | None
) -> ChatMessage:
    """:func:`message_from_json` through pydantic's validation (any data)."""
    # Data of the current shape is parsed straight from JSON (that parse ignores nothing it
    # holds); anything else, or data it rejects (a legacy null), takes the legacy reader.
    if not legacy_shape(data):
        try:
            return _DECODE_CURRENT(data)
        except (ValidationError, AttributeError, TypeError):
            pass
    try:
        return _DECODE.validate_json(data)
    except (AttributeError, TypeError) as exc:  # LlamaIndex's own validators on odd data
        raise _not_a_message(data, key, position, f"{type(exc).__name__}: {exc}") from exc
    except ValidationError as exc:
        where = "" if key is None else f" at key {key!r}"
        if position is not None:
            where += f" position {position}"
        stored = bytes(data) if isinstance(data, bytearray) else data
        problem = _unrepresentable_json(data) if LLAMA_INDEX else None
        if problem is not None:
            raise SerializationError(
                f"the stored message{where} has a {problem} that LlamaIndex's ChatMessage "
                f"cannot hold{_INTACT} (read it without llama-index-core installed, or move "
                "it with `chat-store export`)",
                key=key,
                position=position,
                data=stored,
            ) from exc
        raise _not_a_message(data, key, position, f"{exc.error_count()} errors") from exc


def _not_a_message(
    data: str | bytes | bytearray, key: str | None, position: int | None, problem: str
) -> CorruptDataError:
    where = "" if key is None else f" at key {key!r}"
    if position is not None:
        where += f" position {position}"
    preview = bytes(data[:80]) if isinstance(data, (bytes, bytearray)) else data[:80]
    remedy = "" if key is None else f" ({corrupt_data_remedy(key)})"
    return CorruptDataError(
        f"stored data{where} is not a chat message ({problem[:200]}; starts with "
        f"{preview!r}){remedy}",
        key=key,
        position=position,
        data=bytes(data) if isinstance(data, bytearray) else data,
    )


def messages_from_json(
    items: Sequence[str | bytes | bytearray], *, key: str | None = None, start: int = 0
) -> list[ChatMessage]:
    """Parse the messages of one read, in order (see :func:`message_from_json`).

    ``items[i]`` was at position ``start + i`` (named in errors). A long read is parsed with
    the cyclic garbage collector paused (see :func:`collector_paused`).
    """
    with collector_paused(len(items)):
        messages = [fast_message(item) for item in items]
        for i, message in enumerate(messages):
            if message is None:
                messages[i] = _validated_message(items[i], key, start + i)
        return messages  # type: ignore[return-value]  # no None left


def messages_removed(
    key: str, removed: Iterable[tuple[int, str | bytes | CorruptDataError]], *, storage: str
) -> list[ChatMessage]:
    """Parse what a removal has already removed (a script's or a statement's reply).

    Args:
        key: The conversation key.
        removed: ``(position it had, data as stored)`` in order; a :class:`CorruptDataError`
            in place of data the backend found unreadable before parsing.
        storage: Where it was removed from, named in the error.

    Raises:
        CorruptDataError: Something removed is not a message: the first, by
            :func:`~.errors.removal_error` (it says the data was removed and holds it).
        SerializationError: The same, for a message the model in use cannot hold.
    """
    pairs = list(removed)
    messages = []
    with collector_paused(len(pairs)):
        for position, data in pairs:
            try:
                if isinstance(data, CorruptDataError):
                    raise data
                messages.append(message_from_json(data, key=key, position=position))
            except (CorruptDataError, SerializationError) as exc:
                raise removal_error(exc, storage) from exc
    return messages


def _unrepresentable_json(data: str | bytes | bytearray) -> str | None:
    """Name what LlamaIndex cannot hold in a message core's own model reads, else ``None``."""
    # Imported here: with LlamaIndex's classes in use, only this error path needs core's model.
    from llama_index.storage.chat_store.core import _model

    try:
        return _model.unrepresentable(_model.ChatMessage.model_validate_json(data))
    except ValidationError:
        return None


def coerce_message(value: Any, *, copy: bool = True) -> ChatMessage:
    """Return a private :class:`ChatMessage` for a value given as a message.

    Accepts a :class:`ChatMessage` of the model in use (copied, so later changes by the
    caller do not reach the store), a dict in the wire shape (legacy ``content`` too), or
    another pydantic ``ChatMessage`` model (converted through its JSON, losslessly).

    Args:
        value: The message given.
        copy: Copy a :class:`ChatMessage` given. A store that serializes the message
            before returning (and keeps no reference to it) passes ``False``: the JSON
            is its private copy, and copying first would only cost time.

    Raises:
        InvalidMessageError: The value is not a message (or, with ``llama-index-core``
            installed, a message LlamaIndex's model cannot hold).
        SerializationError: The message is nested too deeply to copy or store.
    """
    if type(value) is ChatMessage:
        if not copy:
            return value
        try:
            return copy_message(value)
        except RecursionError as exc:  # JSON could not carry it either
            raise SerializationError("cannot store this message: it is nested too deeply") from exc
    try:
        if isinstance(value, ChatMessage):  # a subclass: keep only the model's own fields
            return _DECODE.validate_json(value.model_dump_json())
        if isinstance(value, Mapping):
            return _DECODE.validate_python(dict(value))
        if isinstance(value, BaseModel) and type(value).__name__ == "ChatMessage":
            return _DECODE.validate_json(value.model_dump_json())
    except ValidationError as exc:
        raise InvalidMessageError(
            f"cannot use this {type(value).__qualname__} as a chat message: {exc}"
        ) from exc
    raise InvalidMessageError(
        f"expected a ChatMessage or a dict in its JSON shape, got {type(value).__qualname__}"
    )


def coerce_messages(values: Iterable[Any], *, copy: bool = True) -> list[ChatMessage]:
    """Apply :func:`coerce_message` to each value (a single message is rejected).

    Args:
        values: The messages given.
        copy: As for :func:`coerce_message`.

    Raises:
        InvalidMessageError: ``values`` is not a list of messages.
    """
    if isinstance(values, (str, bytes, Mapping, BaseModel)) or not isinstance(values, Iterable):
        raise InvalidMessageError(f"expected a list of messages, got {type(values).__qualname__}")
    return [coerce_message(v, copy=copy) for v in values]


def copy_message(message: ChatMessage) -> ChatMessage:
    """Return a deep copy: changing it never changes the original.

    Equivalent to ``message.model_copy(deep=True)``, several times faster: stores copy every
    message on the way in and out, and messages are almost all str, dict and list.
    """
    return _copy_model(message)


def copy_messages(messages: Iterable[ChatMessage]) -> list[ChatMessage]:
    """Return deep copies of ``messages`` in a new list (see :func:`copy_message`).

    A long conversation is copied with the cyclic garbage collector paused (see
    :func:`collector_paused`).
    """
    if not isinstance(messages, (list, tuple)):
        messages = list(messages)
    with collector_paused(len(messages)):
        return [_copy_model(m) for m in messages]


@contextlib.contextmanager
def collector_paused(count: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while ``count`` messages are built (copied, parsed).

    The messages of a long conversation are thousands of new containers that all survive
    their creation, so CPython would otherwise run collections that traverse every object
    of the process (a full one per few tens of thousands of survivors), which cost several
    times the work itself: parsing 10,000 messages into LlamaIndex's classes takes three
    times as long with the collector running. Messages hold no reference cycles, so pausing
    frees nothing later than it would have been freed. Below ``_PAUSE_GC_FROM`` messages,
    or when the collector is already off, nothing changes.
    """
    if count < _PAUSE_GC_FROM or not gc.isenabled():
        yield
        return
    # Not a lock: another thread's pause seen here just means this work runs unpaused.
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# Below this many messages a copy or parse allocates too little for a collection to matter.
_PAUSE_GC_FROM = 64
# Values that need no copy. Anything not listed and not a dict, list or model is deep-copied.
_ATOMIC = frozenset({str, int, float, bool, type(None), bytes, MessageRole})
_new_object = object.__new__
_set_attribute = object.__setattr__
# pydantic models keep these in slots; the slots' own setters skip every attribute lookup.
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _copy_value(value: Any) -> Any:
    kind = type(value)
    if kind in _ATOMIC:
        return value
    if kind is dict:
        return {k: v if type(v) in _ATOMIC else _copy_value(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _ATOMIC else _copy_value(v) for v in value]
    if kind in _MODELS or isinstance(value, BaseModel):
        _MODELS.add(kind)
        return _copy_model(value)
    return copy.deepcopy(value)


_MODELS: set[type] = set()  # model classes seen, so the isinstance check runs once per class


def _copy_model(model: _M) -> _M:
    # What BaseModel.__copy__ does, with the field values copied deeply as above.
    new = _new_object(type(model))
    _set_attribute(
        new,
        "__dict__",
        {k: v if type(v) in _ATOMIC else _copy_value(v) for k, v in model.__dict__.items()},
    )
    _set_fields_set(new, set(model.__pydantic_fields_set__))
    extra, private = model.__pydantic_extra__, model.__pydantic_private__
    _set_extra(new, None if extra is None else _copy_value(extra))
    _set_private(new, None if private is None else _copy_value(private))
    return new
