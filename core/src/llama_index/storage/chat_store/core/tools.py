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

from collections.abc import Sequence
from typing import Any

__all__ = ["calls_tools", "is_tool_result", "safe_trim_count", "safe_window"]

_RESULT_ROLES = frozenset({"tool", "function"})


def _role(message: Any) -> str:
    role = message.role
    return str(getattr(role, "value", role))


def is_tool_result(message: Any) -> bool:
    """Whether ``message`` answers a tool call (role ``tool``, or the legacy ``function``)."""
    return _role(message) in _RESULT_ROLES


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


def safe_trim_count(messages: Sequence[Any], n: int) -> int:
    """How many leading messages to remove, at least ``n``, so no tool result leads what is left.

    ``messages`` is the conversation's beginning (at least its first ``n`` messages and the run
    of tool results after them, if any).
    """
    n = min(max(n, 0), len(messages))
    while 0 < n < len(messages) and is_tool_result(messages[n]):
        n += 1
    return n
