"""The dump format of ``chat-store export`` / ``chat-store import``: JSON lines, one message each.

::

    {"format":"llama-index-chat-store-dump","version":1}
    {"key":"user1","message":{"role":"user","additional_kwargs":{},"blocks":[...]}}
    ...
    {"end":{"keys":1,"messages":2}}

The header names the format and its version; a reader refuses a newer
version. Each message line holds a conversation key and the message exactly
as core's ``message_to_json`` writes it; a conversation's messages are
consecutive and in order. The end line carries the totals, so a truncated
dump is detected. UTF-8, ``\\n`` line ends; keys are ASCII-escaped JSON strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from llama_index.storage.chat_store.core import (
    ChatMessage,
    CorruptDataError,
    message_from_json,
    message_to_json,
)

__all__ = [
    "DUMP_FORMAT",
    "DUMP_VERSION",
    "DumpTotals",
    "dump_end",
    "dump_header",
    "dump_line",
    "read_dump",
]

DUMP_FORMAT = "llama-index-chat-store-dump"
"""The ``format`` value of a dump's header line."""
DUMP_VERSION = 1
"""The version this module writes, and the newest it reads."""


@dataclass(frozen=True)
class DumpTotals:
    """What a dump's end line says it holds."""

    keys: int
    messages: int


def dump_header() -> str:
    """Return the header line (without the newline)."""
    return json.dumps({"format": DUMP_FORMAT, "version": DUMP_VERSION}, separators=(",", ":"))


def dump_line(key: str, message: ChatMessage) -> str:
    """Return the line for one message of conversation ``key`` (without the newline).

    Raises:
        SerializationError: The message cannot be serialized.
    """
    return f'{{"key":{json.dumps(key)},"message":{message_to_json(message)}}}'


def dump_end(totals: DumpTotals) -> str:
    """Return the end line (without the newline)."""
    return json.dumps(
        {"end": {"keys": totals.keys, "messages": totals.messages}}, separators=(",", ":")
    )


def _malformed(number: int, why: str, source: str) -> CorruptDataError:
    return CorruptDataError(f"{source} line {number}: {why}")


def _parse(raw: str | bytes, number: int, source: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise _malformed(number, f"not JSON ({exc})", source) from exc
    if not isinstance(value, dict):
        raise _malformed(number, "not a JSON object", source)
    return value


def _check_header(raw: str | bytes, source: str) -> None:
    header = _parse(raw, 1, source)
    if header.get("format") != DUMP_FORMAT:
        raise _malformed(1, f"not a chat-store dump (no {DUMP_FORMAT!r} header)", source)
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _malformed(1, f"invalid dump version {version!r}", source)
    if version > DUMP_VERSION:
        raise _malformed(
            1,
            f"dump version {version} is newer than this chat-store reads ({DUMP_VERSION}): "
            "upgrade llama-index-storage-chat-store-cli",
            source,
        )


def _end(line: dict[str, Any], number: int, source: str) -> DumpTotals:
    end = line["end"]
    if not isinstance(end, dict):
        raise _malformed(number, "invalid end line", source)
    keys, messages = end.get("keys"), end.get("messages")
    if not isinstance(keys, int) or not isinstance(messages, int):
        raise _malformed(number, "invalid end line (keys and messages must be integers)", source)
    return DumpTotals(keys=keys, messages=messages)


_DECODER = json.JSONDecoder()
_KEY = '{"key":'
_MESSAGE = ',"message":'


def _split_line(text: str) -> tuple[str, str] | None:
    """Split a line as :func:`dump_line` writes it into (key, message JSON), without parsing it.

    The message text goes to ``message_from_json`` exactly as written; any other
    spelling of a message line (spaces, other key order) returns None and is
    parsed as plain JSON instead.
    """
    if not text.startswith(_KEY):
        return None
    try:
        key, end = _DECODER.raw_decode(text, len(_KEY))
    except ValueError:
        return None
    body = text.rstrip("\r\n")
    if not isinstance(key, str) or not text.startswith(_MESSAGE, end) or body[-1:] != "}":
        return None
    return key, body[end + len(_MESSAGE) : -1]


def _message_line(line: dict[str, Any], number: int, source: str) -> tuple[str, str]:
    key, message = line.get("key"), line.get("message")
    if not isinstance(key, str) or not isinstance(message, dict):
        raise _malformed(number, 'expected {"key": <string>, "message": {...}}', source)
    return key, json.dumps(message, ensure_ascii=False)


def read_dump(
    lines: Iterable[str | bytes], *, source: str = "dump"
) -> Iterator[tuple[str, ChatMessage]]:
    """Yield ``(key, message)`` from dump lines, streaming (one line in memory at a time).

    Args:
        lines: The dump's lines (a text or binary file works).
        source: How errors name the input (a file name or ``"stdin"``).

    Raises:
        CorruptDataError: A line is malformed (the message names its number), the
            header is missing or newer, the end line is missing (a truncated
            dump), or the totals do not match.
    """
    number = 0
    keys: set[str] = set()
    count = 0
    totals: DumpTotals | None = None
    for number, raw in enumerate(lines, start=1):
        if number == 1:
            _check_header(raw, source)
            continue
        if not raw.strip():
            continue
        if totals is not None:
            raise _malformed(number, "data after the end line", source)
        text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
        split = _split_line(text)
        if split is None:
            line = _parse(text, number, source)
            if "end" in line:
                totals = _end(line, number, source)
                continue
            split = _message_line(line, number, source)
        key, message = split
        try:
            parsed = message_from_json(message)
        except CorruptDataError as exc:
            raise _malformed(number, f"not a chat message for key {key!r} ({exc})", source) from exc
        keys.add(key)
        count += 1
        yield key, parsed
    if number == 0:
        raise _malformed(1, "empty input (a dump starts with a header line)", source)
    if totals is None:
        raise _malformed(number, "the dump ends without its end line (truncated?)", source)
    if totals != DumpTotals(keys=len(keys), messages=count):
        raise _malformed(
            number,
            f"the end line promises {totals.messages} messages in {totals.keys} keys, "
            f"the dump holds {count} in {len(keys)}",
            source,
        )
