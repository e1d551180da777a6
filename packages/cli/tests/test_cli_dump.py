"""The dump format: what export writes, import reads, and every way a dump can be broken."""

from __future__ import annotations

import pytest

from llama_index.storage.chat_store.cli import (
    DumpTotals,
    dump_end,
    dump_header,
    dump_line,
    read_dump,
)
from llama_index.storage.chat_store.core import CorruptDataError, message_to_json
from llama_index.storage.chat_store.testing import (
    HOSTILE_KEYS,
    every_block_type,
    tricky_messages,
)


def test_lines_round_trip_every_message_and_hostile_key_exactly() -> None:
    messages = every_block_type() + tricky_messages()
    pairs = [(key, m) for key in HOSTILE_KEYS for m in messages[:3]] + [("k", m) for m in messages]
    lines = [dump_header()] + [dump_line(k, m) for k, m in pairs]
    lines.append(dump_end(DumpTotals(keys=len(HOSTILE_KEYS) + 1, messages=len(pairs))))
    text = "".join(line + "\n" for line in lines).encode("utf-8")
    back = list(read_dump(text.splitlines(keepends=True)))
    assert [(k, message_to_json(m)) for k, m in back] == [(k, message_to_json(m)) for k, m in pairs]
    assert all("\n" not in line for line in lines)


def test_message_text_is_embedded_exactly_as_core_writes_it() -> None:
    message = tricky_messages()[4]
    assert dump_line("u", message) == '{"key":"u","message":' + message_to_json(message) + "}"


GOOD_HEADER = dump_header()
GOOD = dump_line("k", every_block_type()[0])
END1 = dump_end(DumpTotals(keys=1, messages=1))


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ([], "line 1: empty input"),
        (["{}"], "line 1: not a chat-store dump"),
        (["not json"], "line 1: not JSON"),
        (
            ['{"format":"llama-index-chat-store-dump","version":2}'],
            "line 1: dump version 2 is newer",
        ),
        (
            ['{"format":"llama-index-chat-store-dump","version":"1"}'],
            "line 1: invalid dump version",
        ),
        ([GOOD_HEADER, GOOD], "line 2: the dump ends without its end line"),
        ([GOOD_HEADER, GOOD, GOOD[:-9]], "line 3: not JSON"),
        ([GOOD_HEADER, GOOD, "[1]", END1], "line 3: not a JSON object"),
        ([GOOD_HEADER, '{"key":1,"message":{}}', END1], 'line 2: expected {"key"'),
        ([GOOD_HEADER, '{"key":"k","message":{"blocks":7}}', END1], "line 2: not a chat message"),
        ([GOOD_HEADER, GOOD, END1, GOOD], "line 4: data after the end line"),
        ([GOOD_HEADER, GOOD, GOOD, END1], "line 4: the end line promises 1 messages"),
        ([GOOD_HEADER, GOOD, '{"end":{"keys":"1"}}'], "line 3: invalid end line"),
    ],
)
def test_broken_dumps_raise_corrupt_data_error_naming_the_line(
    lines: list[str], error: str
) -> None:
    with pytest.raises(CorruptDataError, match=f"^dump {error}"):
        list(read_dump(lines))


def test_blank_lines_are_ignored() -> None:
    assert len(list(read_dump([GOOD_HEADER, "", GOOD, "  ", END1, ""]))) == 1


def test_hand_written_lines_in_any_json_spelling_are_read() -> None:
    spaced = '{ "message": {"role": "user", "content": "old style"}, "key": "k" }'
    ((key, message),) = list(read_dump([GOOD_HEADER, spaced, END1]))
    assert (key, message.content) == ("k", "old style")


def test_invalid_utf8_is_a_malformed_line() -> None:
    line = GOOD.replace('"a"', '"\udcff"').encode("utf-8", "surrogateescape")
    with pytest.raises(CorruptDataError, match=r"^dump line 2: not a chat message"):
        list(read_dump([GOOD_HEADER.encode(), line, END1.encode()]))
