"""Tool exchanges: where a window of a conversation may start and end, and a trim may stop.

A tool exchange is an assistant message that calls tools (LlamaIndex's ``ToolCallBlock`` in its
blocks, or OpenAI-style ``additional_kwargs["tool_calls"]``) followed by the tool-role messages
answering it, one per call. Chat APIs reject a history that starts with a tool result whose call
is missing, or a call whose answers are missing ("messages with role 'tool' must be a response
to a preceding message with 'tool_calls'"). So a safe window never starts on a tool result (it
widens backwards to the call) and never ends between a call and its answers (it widens forwards
over them); a safe trim never leaves a tool result at the front (it removes the rest of the run).

These are the rules, written once; stores apply them where they read or trim.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Sequence
from itertools import takewhile
from typing import Any, TypeVar

__all__ = [
    "SafeRead",
    "calls_tools",
    "is_tool_result",
    "is_tool_result_json",
    "read_tool_safe",
    "safe_read",
    "safe_trim_count",
    "safe_trim_plan",
    "safe_window",
]

_M = TypeVar("_M")

SafeRead = Generator[tuple[int, "int | None"], Sequence[_M], list[_M]]
"""A tool-safe read: yields ``(offset, limit)`` reads, receives each one's messages, returns the
window (see :func:`safe_read`)."""

_FIRST_PAD = 4
"""Messages read beyond each end of a window to find where its exchanges begin and end: enough
for an exchange of three parallel calls; a longer run of results is read again, wider."""

_RESULT_ROLES = frozenset({"tool", "function"})


def _role(message: Any) -> str:
    role = message.role
    return str(getattr(role, "value", role))


def is_tool_result(message: Any) -> bool:
    """Whether ``message`` answers a tool call (role ``tool``, or the legacy ``function``)."""
    return _role(message) in _RESULT_ROLES


def is_tool_result_json(data: Any) -> bool:
    """Whether ``data``, a message's stored JSON (text or bytes), is a tool result.

    For layouts that trim stored messages without decoding them into messages; anything that
    is not a JSON object (corrupt data included) is not a tool result.
    """
    try:
        message = json.loads(data)
    except (TypeError, ValueError):
        return False
    return isinstance(message, dict) and message.get("role") in _RESULT_ROLES


def calls_tools(message: Any) -> bool:
    """Whether ``message`` is an assistant message calling tools (blocks or additional_kwargs)."""
    if _role(message) != "assistant":
        return False
    if message.additional_kwargs.get("tool_calls"):
        return True
    return any(getattr(block, "block_type", None) == "tool_call" for block in message.blocks)


def safe_window(messages: Sequence[Any], start: int, stop: int) -> tuple[int, int]:
    """Widen ``messages[start:stop]`` so that it neither starts nor ends inside a tool exchange.

    ``start`` moves back over tool results to the message before them (the call); ``stop``
    moves forward over the tool results that follow it. Both are indices into ``messages``
    (``0 <= start <= stop <= len(messages)``); an empty window stays empty.
    """
    if start >= stop:
        return start, stop
    while start > 0 and is_tool_result(messages[start]):
        start -= 1
    while stop < len(messages) and is_tool_result(messages[stop]):
        stop += 1
    return start, stop


def safe_trim_count(
    messages: Sequence[Any], n: int, is_result: Callable[[Any], bool] = is_tool_result
) -> int:
    """How many leading messages to remove, at least ``n``, so no tool result leads what is left.

    ``messages`` is the conversation's beginning (at least its first ``n`` messages and the run
    of tool results after them, if any); ``is_result`` tells a tool result
    (:func:`is_tool_result_json` for stored JSON). A count equal to ``len(messages)`` may need a
    longer beginning, unless ``messages`` is the whole conversation.
    """
    n = min(max(n, 0), len(messages))
    while 0 < n < len(messages) and is_result(messages[n]):
        n += 1
    return n


def safe_read(offset: int, limit: int | None) -> SafeRead[Any]:
    """Read ``messages[offset:][:limit]`` widened by :func:`safe_window`, in as few reads as it can.

    A generator driven by the caller: each ``(offset, limit)`` it yields is one read of the
    conversation (``messages[offset:][:limit]``, in the caller's store), sent back as a list;
    it returns the widened window. The first read takes the window and a few messages on each
    side, which settles nearly every window in ONE read, with no more round trips than the plain
    one; a window whose start or end lands in a longer run of tool results is read again, wider
    (each read is taken whole, so a store whose reads are atomic returns one consistent state).
    """
    pad = _FIRST_PAD
    while True:
        if offset >= 0:
            first = max(offset - pad, 0)
            size = None if limit is None else limit + (offset - first) + pad
            got = yield first, size
            start, at_start = offset - first, first == 0
            at_end = size is None or len(got) < size
        else:
            got = yield offset - pad, None
            start, at_start = max(len(got) + offset, 0), len(got) < pad - offset
            at_end = True
        stop = len(got) if limit is None else min(start + limit, len(got))
        if start >= stop:
            return []
        start, stop = safe_window(got, start, stop)
        settled_start = start > 0 or at_start or not is_tool_result(got[0])
        if settled_start and (stop < len(got) or at_end):
            return list(got[start:stop])
        pad *= 8


def read_tool_safe(
    read: Callable[[int, int | None], Sequence[_M]], offset: int, limit: int | None
) -> list[_M]:
    """Run :func:`safe_read` over ``read(offset, limit)`` (a store's plain windowed read)."""
    plan = safe_read(offset, limit)
    request = next(plan)
    while True:
        try:
            request = plan.send(read(*request))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def safe_trim_plan(
    read: Callable[[int, int], Generator[Any, Any, Sequence[Any]]],
    n: int,
    count: int,
    is_result: Callable[[Any], bool] = is_tool_result_json,
) -> Generator[Any, Any, int]:
    """A plan step for layouts that read a conversation by position: how many a safe trim takes.

    ``read(lo, hi)`` is the layout's plan reading positions ``[lo, hi)`` of the state the trim
    will change (stored JSON by default: see ``is_result``); ``count`` is how many it holds.
    Returns :func:`safe_trim_count` for ``n``, reading a few messages after the first ``n``,
    and more only while all it read are tool results.
    """
    n, pad = min(max(n, 0), count), _FIRST_PAD
    while 0 < n < count:
        following = yield from read(n, min(n + pad, count))
        taken = sum(1 for _ in takewhile(is_result, following))
        n += taken
        if taken < len(following):
            break
        pad *= 8
    return n
