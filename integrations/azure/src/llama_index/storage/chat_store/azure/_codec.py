"""How keys, table names and messages map onto Azure Table entities (no I/O here).

Facts this module encodes (Azure Table Storage; Azurite enforces the same):

* PartitionKey and RowKey are at most 1 KiB of UTF-16 (512 code units) and must not
  contain slash, backslash, ``#``, ``?`` or the control characters U+0000-U+001F, U+007F-U+009F.
* A string property holds at most 64 KiB of UTF-16 (32,768 code units), a binary
  property 64 KiB; an entity holds at most 255 properties and 1 MiB in total.
* An entity-group transaction holds at most 100 operations and 4 MiB of payload.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from llama_index.storage.chat_store.core import (
    ChatMessage,
    ChatStoreError,
    ConfigurationError,
    CorruptDataError,
    PayloadTooLargeError,
    message_from_json,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import corrupt_data_remedy, removal_error
from llama_index.storage.chat_store.core.tools import is_tool_result, is_tool_result_json

__all__ = [
    "BATCH_MAX_OPS",
    "HASHED_PREFIX",
    "LLAMA_INDEX_RECORD",
    "LLAMA_INDEX_RECORD_MAX",
    "ORDER_GROUP_UNITS",
    "PAYLOAD_PROPERTIES",
    "Action",
    "Found",
    "account_from_endpoint",
    "check_entity_size",
    "chunks",
    "decode_key",
    "decode_llama_index_message",
    "decode_payload",
    "encode_key",
    "encode_llama_index_message",
    "encode_payload",
    "fits",
    "found",
    "is_llama_index_tool_result",
    "is_tool_result_payload",
    "order_bounds",
    "order_group",
    "order_group_end",
    "order_key",
    "parse_connection_string",
    "sanitize_table_name",
    "taken",
    "validate_table_name",
]

KEY_MAX_UTF16_UNITS = 512
PROPERTY_MAX_BYTES = 65_536
ENTITY_MAX_BYTES = 1_048_576
COSMOS_ENTITY_MAX_BYTES = 2_097_152
BATCH_MAX_OPS = 100
# The service allows 4 MiB per transaction; keep room for the multipart framing.
BATCH_MAX_WIRE_BYTES = 4 * 1_048_576 - 256 * 1024

# Characters Azure forbids in PartitionKey/RowKey, plus "%" (our escape character), become
# %XX. The line and paragraph separators become %uXXXX: Azurite accepts them in a key but
# then fails every delete addressed to it (400 InvalidInput), so a conversation under such
# a key could be written and never removed.
_ESCAPED = frozenset("/\\#?%") | frozenset(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))
_ESCAPED_WIDE = frozenset("\u2028\u2029")
_ESCAPE_RE = re.compile(r"%(?:u([0-9A-F]{4})|([0-9A-F]{2}))")
HASHED_PREFIX = "%h"
"""Keys too long once escaped are stored under ``%h`` + SHA-256; the entity keeps the key."""

_TABLE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_RESERVED_TABLE_NAMES = frozenset({"tables"})


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def encode_key(key: str) -> str:
    """Return the PartitionKey/RowKey for a conversation key.

    Keys Azure accepts as they are stay unchanged (so data written by LlamaIndex
    under plain keys is found); percent, slash, backslash, ``#``, ``?`` and control
    characters become ``%XX``, U+2028 and U+2029 ``%u2028`` and ``%u2029``.
    A key still too long after escaping maps to ``%h<sha256>`` and the caller keeps
    the real key in a ``Key`` property.
    """
    escaped = "".join(_escape(c) for c in key)
    if _utf16_units(escaped) <= KEY_MAX_UTF16_UNITS:
        return escaped
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return HASHED_PREFIX + digest


def _escape(char: str) -> str:
    if char in _ESCAPED:
        return f"%{ord(char):02X}"
    if char in _ESCAPED_WIDE:
        return f"%u{ord(char):04X}"
    return char


def decode_key(encoded: str, stored_key: Any = None) -> str:
    """Invert :func:`encode_key`; ``stored_key`` is the entity's ``Key`` property, if any."""
    if isinstance(stored_key, str):
        return stored_key
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), encoded)


# -- keys in key order ------------------------------------------------------------------
#
# The service compares PartitionKeys and RowKeys by UTF-16 code unit (Azurite too: "\U0001F600"
# sorts before "\uE000"), and encode_key's %XX escapes sort apart from the characters they
# stand for ("a/" after "a-"): RowKeys made by encode_key do not sort as the keys do. An order
# key does: the key's UTF-8 bytes as one bit string, cut into 15-bit units, each stored as the
# character U+4000 + unit (U+4000-U+BFFF: no surrogates, nothing Azure forbids, so unit order
# is code unit order), the last one padded with zero bits. Comparing two of them compares the
# keys' bytes: at the first differing bit, or, for a key that is a prefix of another, by
# length (no UTF-8 byte of a key is 0, so the longer one has a 1 bit past the shorter's end).
# A key's prefixes map to one range of order keys (order_bounds).
#
# 1,024 bytes need 547 units and a RowKey holds 512, so keys whose order key would be longer
# than ORDER_GROUP_UNITS (over 825 bytes) share a group: its first ORDER_GROUP_UNITS units,
# U+C000 (above every unit), then a SHA-256 of the key. A group sorts where its keys do; a
# reader sorts a group's few members itself (by their Key property).

_ORDER_BASE = 0x4000
_ORDER_BITS = 15
_GROUP_MARK = "\uc000"
ORDER_GROUP_UNITS = 440
"""Order keys longer than this many units are grouped (see :func:`order_key`)."""


def _pack(data: bytes) -> str:
    bits = 8 * len(data)
    units = -(-bits // _ORDER_BITS)
    number = int.from_bytes(data, "big") << (units * _ORDER_BITS - bits)
    mask = (1 << _ORDER_BITS) - 1
    return "".join(
        chr(_ORDER_BASE + (number >> (_ORDER_BITS * (units - 1 - i)) & mask)) for i in range(units)
    )


def order_key(key: str) -> str:
    """Return the RowKey that sorts as ``key``'s UTF-8 bytes do (within a group: see above)."""
    data = key.encode("utf-8")
    packed = _pack(data)
    if len(packed) <= ORDER_GROUP_UNITS:
        return packed
    return packed[:ORDER_GROUP_UNITS] + _GROUP_MARK + hashlib.sha256(data).hexdigest()


def order_group(row_key: str) -> str | None:
    """The group an order key belongs to (its first units and the mark), or None."""
    if len(row_key) > ORDER_GROUP_UNITS and row_key[ORDER_GROUP_UNITS] == _GROUP_MARK:
        return row_key[: ORDER_GROUP_UNITS + 1]
    return None


def order_bounds(prefix: str) -> tuple[str, str]:
    """The order keys of keys starting with ``prefix``: ``lo <= RowKey < hi``."""
    data = prefix.encode("utf-8")
    packed = _pack(data)
    full, rest = divmod(8 * len(data), _ORDER_BITS)
    if full >= ORDER_GROUP_UNITS:  # every such key is in one group
        group = packed[:ORDER_GROUP_UNITS] + _GROUP_MARK
        return group, order_group_end(group)
    if rest == 0:  # the units of the keys' next bits, or the mark, follow
        return packed, packed + chr(ord(_GROUP_MARK) + 1)
    # The last unit holds `rest` bits of the prefix: the keys' units run through every
    # value of its remaining bits.
    return packed, packed[:-1] + chr(ord(packed[-1]) + (1 << (_ORDER_BITS - rest)))


def order_group_end(group: str) -> str:
    """The first RowKey after every order key of ``group``."""
    return group[:-1] + chr(ord(group[-1]) + 1)


def validate_table_name(name: str, what: str) -> str:
    """Return ``name`` if Azure accepts it as a table name.

    Raises:
        ConfigurationError: Not 3-63 alphanumerics starting with a letter, or reserved.
    """
    if not isinstance(name, str) or not _TABLE_NAME_RE.match(name):
        raise ConfigurationError(
            f"{what} {name!r} is not a valid Azure table name: use 3-63 letters and digits, "
            "starting with a letter (layout='llama_index' applies LlamaIndex's sanitizing "
            "instead)"
        )
    if name.lower() in _RESERVED_TABLE_NAMES:
        raise ConfigurationError(f"{what} {name!r} is reserved by Azure")
    return name


def sanitize_table_name(name: str) -> str:
    """Apply LlamaIndex's table-name rules (so both find the same tables).

    Non-alphanumerics are removed, a leading digit gets an ``A`` prefix, names are
    padded with ``A`` to 3 characters and cut at 63.
    """
    cleaned = re.sub(r"[^A-Za-z0-9]", "", name)
    if cleaned[:1].isdigit():
        cleaned = "A" + cleaned
    if len(cleaned) < 3:
        cleaned += "A" * (3 - len(cleaned))
    return cleaned[:63]


Action = tuple[str, dict[str, Any], str | None]
"""A transaction operation: ``(verb, entity, etag or None)``.

Verbs: ``create``, ``update`` and ``upsert`` (replacing the entity), ``delete``, and
``touch`` (the entity stays as it is, its ETag changes: a condition other writers see).
"""


def fits(actions: Sequence[Action]) -> bool:
    """Return whether the actions fit one transaction (100 operations, 4 MiB)."""
    if len(actions) > BATCH_MAX_OPS:
        return False
    return sum(entity_wire_size(e) for _, e, _ in actions) <= BATCH_MAX_WIRE_BYTES


def chunks(actions: Sequence[Action]) -> list[list[Action]]:
    """Cut actions into transactions within the operation and payload limits."""
    out: list[list[Action]] = []
    current: list[Action] = []
    size = 0
    for action in actions:
        wire = entity_wire_size(action[1])
        if current and (len(current) >= BATCH_MAX_OPS or size + wire > BATCH_MAX_WIRE_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(action)
        size += wire
    if current:
        out.append(current)
    return out


# -- native message payloads ------------------------------------------------------------------


_MAX_CHUNKS = COSMOS_ENTITY_MAX_BYTES // PROPERTY_MAX_BYTES
PAYLOAD_PROPERTIES = ("Message", "Chunks", "Codec", *(f"Chunk{i}" for i in range(_MAX_CHUNKS)))
"""Every property :func:`encode_payload` can write (no entity holds more chunks than these)."""


def encode_payload(message: ChatMessage) -> dict[str, Any]:
    """Return the properties holding one message in the native layout.

    A message whose JSON fits one string property (32,768 UTF-16 code units) is stored
    readable as ``Message``. A larger one is stored zlib-compressed UTF-8 in binary
    properties ``Chunk0..ChunkN`` with ``Chunks`` (their number) and ``Codec``
    (``"zlib"``): UTF-16 would double ASCII text, and the 1 MiB entity limit should
    hold as much conversation as possible.
    """
    text = message_to_json(message)
    if 2 * _utf16_units(text) <= PROPERTY_MAX_BYTES:
        return {"Message": text}
    data = zlib.compress(text.encode("utf-8", "surrogatepass"), 6)
    chunks = [data[i : i + PROPERTY_MAX_BYTES] for i in range(0, len(data), PROPERTY_MAX_BYTES)]
    payload: dict[str, Any] = {f"Chunk{i}": chunk for i, chunk in enumerate(chunks)}
    payload["Chunks"] = len(chunks)
    payload["Codec"] = "zlib"
    return payload


def decode_payload(props: Mapping[str, Any], *, key: str, position: int) -> ChatMessage:
    """Parse the message held by an entity written by :func:`encode_payload`.

    Raises:
        CorruptDataError: Missing or mistyped properties, or not a message.
    """
    text = props.get("Message")
    if isinstance(text, str):
        return message_from_json(text, key=key, position=position)
    count = props.get("Chunks")
    parts = [props.get(f"Chunk{i}") for i in range(count)] if isinstance(count, int) else []
    codec = props.get("Codec")
    if not parts or not all(isinstance(p, bytes) for p in parts) or codec not in (None, "zlib"):
        what = f"holds no message (properties: {sorted(props)[:10]})"
        raise _unreadable(key, position, what, repr(dict(props)))
    data = b"".join(parts)  # type: ignore[arg-type]
    if codec == "zlib":
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise _unreadable(key, position, "is not valid zlib data", data) from exc
    return message_from_json(data, key=key, position=position)


def _unreadable(key: str, position: int, what: str, data: str | bytes) -> CorruptDataError:
    return CorruptDataError(
        f"stored entity at key {key!r} position {position} {what} ({corrupt_data_remedy(key)})",
        key=key,
        position=position,
        data=data,
    )


def is_tool_result_payload(props: Mapping[str, Any]) -> bool:
    """Whether an entity written by :func:`encode_payload` holds a tool result (never raises)."""
    text = props.get("Message")
    if isinstance(text, str):
        return is_tool_result_json(text)
    try:
        return is_tool_result(decode_payload(props, key="", position=0))
    except ChatStoreError:
        return False


Found = ChatMessage | CorruptDataError
"""What a removal found at a position it removes: the message, or why it is unreadable."""


def found(
    decode: Callable[..., ChatMessage], props: Mapping[str, Any], *, key: str, position: int
) -> Found:
    """Parse an entity a removal is about to remove; unreadable data is returned, not raised.

    ``decode`` is the layout's (:func:`decode_payload`, :func:`decode_llama_index_message`).
    A :class:`SerializationError` (valid data the message model in use cannot hold)
    propagates: the removal then removes nothing, and that data stays intact.
    """
    try:
        return decode(props, key=key, position=position)
    except CorruptDataError as exc:
        return exc


def taken(items: Sequence[Found], table: str) -> list[ChatMessage]:
    """Return what a removal that removed ``items`` returns: their messages, in order.

    Raises:
        CorruptDataError: One of them was unreadable: core's :func:`removal_error` of the
            first (it names key and position, says it was removed, holds the data).
    """
    messages = []
    for item in items:
        if isinstance(item, CorruptDataError):
            raise removal_error(item, f"Azure table {table!r}") from item
        messages.append(item)
    return messages


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return 4 + 2 * _utf16_units(value)
    if isinstance(value, (bytes, bytearray)):
        return 4 + len(value)
    return 8


def check_entity_size(
    entity: Mapping[str, Any], *, key: str, cosmos: bool = False, splits: bool = True
) -> None:
    """Raise before the call when the service would reject the entity as too large.

    The size follows Azure's documented accounting: 4 bytes, the keys in UTF-16, and per
    property 8 bytes + its name in UTF-16 + its value.

    Raises:
        PayloadTooLargeError: Over 1 MiB (2 MiB on Cosmos DB), too many properties, or a
            single property over 64 KiB where properties are not split.
    """
    limit = COSMOS_ENTITY_MAX_BYTES if cosmos else ENTITY_MAX_BYTES
    size = 4
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey"):
            size += 2 * _utf16_units(value)
            continue
        size += 8 + 2 * _utf16_units(name) + _value_size(value)
        if not cosmos and not splits and _value_size(value) - 4 > PROPERTY_MAX_BYTES:
            raise PayloadTooLargeError(f"a property of the message at key {key!r} exceeds 64 KiB")
    if size > limit or len(entity) > 252:
        raise PayloadTooLargeError(
            f"the message at key {key!r} needs an entity of {size:,} bytes; Azure Tables "
            f"stores at most {limit:,} bytes per entity ({'Cosmos DB' if cosmos else 'Storage'})"
        )


def entity_wire_size(entity: Mapping[str, Any]) -> int:
    """Estimate an entity's bytes in a transaction body (JSON, binary as base64)."""
    size = 64
    for name, value in entity.items():
        size += len(name) + 48
        if isinstance(value, (bytes, bytearray)):
            size += (len(value) + 2) // 3 * 4
        elif isinstance(value, str):
            size += len(json.dumps(value).encode("utf-8"))
        else:
            size += 24
    return size


# -- LlamaIndex's AzureChatStore layout -----------------------------------------------------

_PART = "_part_"
LLAMA_INDEX_RECORD = "ChatStoreOps"
"""The property of a conversation's last chat row (and of its metadata entity) holding our
record of its last changes; LlamaIndex's store ignores it (see :mod:`._llama_index_layout`)."""
LLAMA_INDEX_RECORD_MAX = 16 * 40
"""Characters a record may take (a bound for the entity size check)."""


def _split_llama_index(name: str, text: str) -> dict[str, str]:
    """Split like LlamaIndex: 64 KiB slices of the UTF-16 encoding (with its BOM)."""
    data = text.encode("utf-16")
    if len(data) < PROPERTY_MAX_BYTES:
        return {name: text}
    parts: dict[str, str] = {}
    start, index = 0, 1
    while start < len(data):
        end = min(start + PROPERTY_MAX_BYTES, len(data))
        # Unlike LlamaIndex (which drops the halves), never cut a surrogate pair.
        if end < len(data) and 0xD800 <= int.from_bytes(data[end - 2 : end], "little") < 0xDC00:
            end -= 2
        chunk = data[start:end]
        parts[f"{name}{_PART}{index}"] = chunk.decode(
            "utf-16" if start == 0 else "utf-16-le", "surrogatepass"
        )
        start, index = end, index + 1
    return parts


def encode_llama_index_message(message: ChatMessage, *, cosmos: bool) -> dict[str, Any]:
    """Return the properties LlamaIndex's AzureChatStore writes for a message.

    Each top-level field of the message JSON (``role``, ``additional_kwargs``,
    ``blocks``) is a property holding ``json.dumps`` of its value, split into
    ``<name>_part_N`` at 64 KiB of UTF-16 on Table Storage.
    """
    fields = json.loads(message_to_json(message))
    props: dict[str, Any] = {}
    for name, value in fields.items():
        text = json.dumps(value)
        if cosmos:
            props[name] = text
        else:
            props.update(_split_llama_index(name, text))
    return props


_NOT_MESSAGE = frozenset({"PartitionKey", "RowKey", "Timestamp", LLAMA_INDEX_RECORD})


def decode_llama_index_message(props: Mapping[str, Any], *, key: str, position: int) -> ChatMessage:
    """Parse an entity written by LlamaIndex's AzureChatStore (or by us in its layout).

    Raises:
        CorruptDataError: A property is not JSON, or the result is not a message.
    """
    fields: dict[str, Any] = {}
    parts: dict[str, dict[int, str]] = {}
    for name, value in props.items():
        if name in _NOT_MESSAGE or not isinstance(value, str):
            continue
        base, sep, index = name.rpartition(_PART)
        if sep and index.isdigit():
            parts.setdefault(base, {})[int(index)] = value
        else:
            fields[name] = value
    for base, pieces in parts.items():
        fields[base] = "".join(pieces[i] for i in sorted(pieces))
    try:
        document = {name: json.loads(text) for name, text in fields.items()}
    except ValueError as exc:
        data = json.dumps(fields, ensure_ascii=False)
        raise _unreadable(key, position, f"is not LlamaIndex JSON: {exc}", data) from exc
    return message_from_json(json.dumps(document), key=key, position=position)


def parse_connection_string(text: str) -> dict[str, str]:
    """The ``name=value`` fields of a storage connection string."""
    fields = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def account_from_endpoint(endpoint: str) -> str:
    """The account a table endpoint names (in its host, or in its path for an emulator)."""
    parts = urlsplit(endpoint)
    path = parts.path.strip("/")
    if path:  # emulator style: http://127.0.0.1:10002/devstoreaccount1
        return path.split("/")[0]
    return (parts.hostname or "").split(".")[0]


def is_llama_index_tool_result(props: Mapping[str, Any]) -> bool:
    """Whether a chat row of LlamaIndex's layout holds a tool result (never raises)."""
    try:
        return is_tool_result(decode_llama_index_message(props, key="", position=0))
    except ChatStoreError:
        return False
