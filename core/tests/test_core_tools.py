"""The tool-exchange rules: every boundary position of exchanges with one and several calls."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from llama_index.storage.chat_store.core import ChatMessage, ToolCallBlock, message_to_json
from llama_index.storage.chat_store.core.tools import (
    calls_tools,
    is_tool_result,
    read_tool_safe,
    safe_trim_count,
    safe_trim_plan,
    safe_window,
)


def _conversation() -> list[ChatMessage]:
    """0 system, 1 user, 2 call (blocks, two parallel calls), 3-4 results, 5 assistant,
    6 user, 7 call (additional_kwargs), 8 result, 9 assistant."""
    call_blocks = ChatMessage(
        role="assistant",
        blocks=[ToolCallBlock(tool_call_id="a", tool_name="f"),
                ToolCallBlock(tool_call_id="b", tool_name="g")],
    )  # fmt: skip
    call_kwargs = ChatMessage(
        role="assistant", content="", additional_kwargs={"tool_calls": [{"id": "c"}]}
    )
    return [
        ChatMessage(role="system", content="s"),
        ChatMessage(role="user", content="u1"),
        call_blocks,
        ChatMessage(role="tool", content="ra", additional_kwargs={"tool_call_id": "a"}),
        ChatMessage(role="tool", content="rb", additional_kwargs={"tool_call_id": "b"}),
        ChatMessage(role="assistant", content="a1"),
        ChatMessage(role="user", content="u2"),
        call_kwargs,
        ChatMessage(role="tool", content="rc", additional_kwargs={"tool_call_id": "c"}),
        ChatMessage(role="assistant", content="a2"),
    ]


def test_what_is_a_call_and_a_result() -> None:
    messages = _conversation()
    assert [calls_tools(m) for m in messages] == [i in (2, 7) for i in range(10)]
    assert [is_tool_result(m) for m in messages] == [i in (3, 4, 8) for i in range(10)]
    assert is_tool_result(ChatMessage(role="function", content="legacy"))


@pytest.mark.parametrize(
    ("start", "widened"), [(0, 0), (1, 1), (2, 2), (3, 2), (4, 2), (5, 5), (8, 7), (9, 9), (10, 10)]
)
def test_a_window_never_starts_on_a_tool_result(start: int, widened: int) -> None:
    messages = _conversation()
    assert safe_window(messages, start, len(messages)) == (widened, len(messages))


@pytest.mark.parametrize(("stop", "widened"), [(1, 1), (2, 2), (3, 5), (4, 5), (5, 5), (8, 9)])
def test_a_window_never_ends_between_a_call_and_its_answers(stop: int, widened: int) -> None:
    assert safe_window(_conversation(), 0, stop) == (0, widened)


def test_an_empty_window_stays_empty() -> None:
    assert safe_window(_conversation(), 4, 4) == (4, 4)


@pytest.mark.parametrize(
    ("n", "removed"), [(0, 0), (1, 1), (2, 2), (3, 5), (4, 5), (5, 5), (8, 9), (10, 10), (12, 10)]
)
def test_a_trim_never_leaves_a_tool_result_in_front(n: int, removed: int) -> None:
    assert safe_trim_count(_conversation(), n) == removed


def _counting_reader(messages: list[ChatMessage]) -> tuple[list[tuple[int, int | None]], Any]:
    reads: list[tuple[int, int | None]] = []

    def read(offset: int, limit: int | None) -> list[ChatMessage]:
        reads.append((offset, limit))
        part = messages[offset:]
        return part if limit is None else part[:limit]

    return reads, read


@pytest.mark.parametrize(("offset", "limit"), [(-20, None), (-3, None), (3, 2), (0, None), (8, 1)])
def test_a_tool_safe_read_takes_one_read_for_short_exchanges(
    offset: int, limit: int | None
) -> None:
    messages = _conversation() * 5
    reads, read = _counting_reader(messages)
    got = read_tool_safe(read, offset, limit)
    n = len(messages)
    start = offset if offset >= 0 else n + offset
    stop = n if limit is None else start + limit
    first, last = safe_window(messages, start, stop)
    assert got == messages[first:last]
    assert len(reads) == 1


def test_a_long_run_of_results_is_read_again_wider_until_it_settles() -> None:
    call = ChatMessage(
        role="assistant", content="", additional_kwargs={"tool_calls": [{"id": "x"}]}
    )
    results = [ChatMessage(role="tool", content=str(i)) for i in range(100)]
    messages = [ChatMessage(role="user", content="u"), call, *results]
    reads, read = _counting_reader(messages)
    assert read_tool_safe(read, -1, None) == messages[1:]
    assert len(reads) == 3  # 1 + 4, then 1 + 32, then 1 + 256 messages from the end
    reads.clear()
    assert read_tool_safe(read, 1, 2) == messages[1:]
    assert len(reads) == 3


def test_a_trim_plan_reads_after_n_until_the_results_end() -> None:
    call = message_to_json(ChatMessage(role="assistant", content="c"))
    stored = [call] * 3 + [
        message_to_json(ChatMessage(role="tool", content=str(i))) for i in range(50)
    ]
    stored.append("not json")
    reads: list[tuple[int, int]] = []

    def read(lo: int, hi: int) -> Generator[Any, Any, list[str]]:
        reads.append((lo, hi))
        return stored[lo:hi]
        yield

    def run(n: int) -> int:
        plan = safe_trim_plan(read, n, len(stored))
        try:
            while True:
                next(plan)
        except StopIteration as done:
            return int(done.value)

    assert run(2) == 2
    assert reads == [(2, 6)]
    assert run(3) == 53  # every result; the corrupt element after them is not one
    assert run(60) == len(stored)
    assert run(0) == 0
