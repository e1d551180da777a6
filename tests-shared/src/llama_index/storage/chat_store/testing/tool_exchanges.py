"""Suite tests of tool-safe windows and trims: neither cuts a tool exchange (see ``core.tools``).

Mixed into :class:`~llama_index.storage.chat_store.testing.conformance.ChatStoreConformance`;
every backend runs them against its server. The expected results come from the rules themselves
(:func:`~llama_index.storage.chat_store.core.tools.safe_window` and ``safe_trim_count``, tested
at every boundary in core) applied to the whole conversation: each case checks the store.
"""

from __future__ import annotations

import pytest

from llama_index.storage.chat_store.core import (
    BaseChatStore,
    ChatMessage,
    TextBlock,
    ToolCallBlock,
)
from llama_index.storage.chat_store.core.tools import safe_trim_count, safe_window

__all__ = ["ToolSafeTests", "ToolSafeTrimTests", "tool_conversation"]


def _result(call_id: str) -> ChatMessage:
    return ChatMessage(
        role="tool", content=f"result {call_id}", additional_kwargs={"tool_call_id": call_id}
    )


def tool_conversation(parallel: int = 3) -> list[ChatMessage]:
    """A conversation with exchanges of one, two and ``parallel`` calls, in both call styles.

    0 system, 1 user, 2 call of ``a`` and ``b`` (blocks), 3-4 their results, 5 assistant,
    6 user, 7 call of ``c`` (``additional_kwargs``), 8 its result, 9 user, then a call of
    ``parallel`` tools (blocks), their results, and a closing assistant message.
    """
    ids = [f"p{i}" for i in range(parallel)]
    return [
        ChatMessage(role="system", content="be helpful"),
        ChatMessage(role="user", content="u1"),
        ChatMessage(
            role="assistant",
            blocks=[
                TextBlock(text="calling a and b"),
                ToolCallBlock(tool_call_id="a", tool_name="f"),
                ToolCallBlock(tool_call_id="b", tool_name="g"),
            ],
        ),
        _result("a"),
        _result("b"),
        ChatMessage(role="assistant", content="a1"),
        ChatMessage(role="user", content="u2"),
        ChatMessage(
            role="assistant",
            content="calling c",
            additional_kwargs={"tool_calls": [{"id": "c", "type": "function"}]},
        ),
        _result("c"),
        ChatMessage(role="user", content="u3"),
        ChatMessage(
            role="assistant",
            blocks=[
                TextBlock(text=f"calling {parallel}"),
                *(ToolCallBlock(tool_call_id=i, tool_name="h") for i in ids),
            ],
        ),
        *map(_result, ids),
        ChatMessage(role="assistant", content="a3"),
    ]


def _expected(messages: list[ChatMessage], offset: int, limit: int | None) -> list[str]:
    n = len(messages)
    start = min(offset if offset >= 0 else max(n + offset, 0), n)
    stop = n if limit is None else min(start + limit, n)
    if start < stop:
        start, stop = safe_window(messages, start, stop)
    return [str(m.content) for m in messages[start:stop]]


def _texts(messages: list[ChatMessage]) -> list[str]:
    return [str(m.content) for m in messages]


class ToolSafeTests:
    """``get_messages(..., tool_safe=True)`` on every backend."""

    def test_tool_safe_window_from_the_end(self, store: BaseChatStore) -> None:
        """``offset=-k`` for every k widens back to the call, never starting on a result.

        If this fails: a tool-safe read returned a window that starts on a tool result whose
        call it left out, or widened when it need not (the expected window is in the message).
        """
        messages = tool_conversation()
        store.set_messages("k", messages)
        for k in range(1, len(messages) + 3):
            got = _texts(store.get_messages("k", offset=-k, tool_safe=True))
            assert got == _expected(messages, -k, None), f"offset=-{k}"
        assert _texts(store.get_messages("k", offset=-3)) == _texts(messages[-3:])

    def test_tool_safe_window_with_limits(self, store: BaseChatStore) -> None:
        """Windows with a start and a limit widen at both ends, never splitting an exchange.

        If this fails: a window ends between a call and its results, or starts on a result.
        """
        messages = tool_conversation()
        store.add_messages("k", messages)
        n = len(messages)
        for offset in (*range(0, n + 1, 1), -4, -7, -9):
            for limit in (0, 1, 2, 3):
                got = _texts(store.get_messages("k", offset=offset, limit=limit, tool_safe=True))
                assert got == _expected(messages, offset, limit), f"{offset=} {limit=}"

    def test_tool_safe_window_over_many_parallel_calls(self, store: BaseChatStore) -> None:
        """A window starting deep in a run of 40 results widens to the call that made them.

        If this fails: the store read too few messages around the window and returned a cut
        exchange instead of reading wider.
        """
        messages = tool_conversation(parallel=40)
        store.set_messages("k", messages)
        n = len(messages)
        for offset in (-2, -5, -30, -41, -42, n - 20):
            got = _texts(store.get_messages("k", offset=offset, tool_safe=True))
            assert got == _expected(messages, offset, None), f"{offset=}"
        got = _texts(store.get_messages("k", offset=10, limit=3, tool_safe=True))
        assert got == _expected(messages, 10, 3)
        assert len(got) == 1 + 40  # the call, every result, and nothing after them

    def test_tool_safe_window_keeps_a_leading_orphan(self, store: BaseChatStore) -> None:
        """A conversation that itself starts on a tool result returns it (nothing to widen to).

        If this fails: the store looped, raised, or dropped the result a trim left in front.
        """
        messages = [_result("x"), _result("y"), ChatMessage(role="user", content="u")]
        store.set_messages("k", messages)
        assert _texts(store.get_messages("k", offset=-2, tool_safe=True)) == _texts(messages)
        assert store.get_messages("missing", offset=-5, tool_safe=True) == []

    def test_tool_safe_takes_only_a_bool(self, store: BaseChatStore) -> None:
        """``tool_safe`` is a bool; anything else is an error, not a silent choice.

        If this fails: a store took ``tool_safe="yes"`` or ``1`` without a ``TypeError``.
        """
        for wrong in ("yes", 1, None):
            with pytest.raises(TypeError, match="tool_safe"):
                store.get_messages("k", offset=-2, tool_safe=wrong)  # type: ignore[arg-type]

    @pytest.mark.asyncio
    async def test_tool_safe_window_async(self, store: BaseChatStore) -> None:
        """The async twins widen the same way (``aget_messages`` and LlamaIndex's name).

        If this fails: an async read ignored ``tool_safe`` or widened differently.
        """
        messages = tool_conversation()
        await store.aset_messages("k", messages)
        for k in (1, 2, 3, 5, 6, 8):
            expected = _expected(messages, -k, None)
            got = await store.aget_messages("k", offset=-k, tool_safe=True)
            assert _texts(got) == expected, f"offset=-{k}"
        got = await store.async_get_messages("k", offset=-1, limit=1, tool_safe=True)
        assert _texts(got) == _expected(messages, -1, 1)


class ToolSafeTrimTests:
    """``delete_oldest_messages(..., tool_safe=True)``: atomic, never leaving a result in front."""

    def test_tool_safe_trim_never_leaves_a_result_in_front(self, store: BaseChatStore) -> None:
        """Trimming n for every n also removes the results whose call went, and no more.

        If this fails: a trim left a tool result in front of the conversation, removed more
        than the rule says, or returned other messages than it removed.
        """
        messages = tool_conversation()
        for n in range(1, len(messages) + 2):
            store.set_messages("k", messages)
            m = safe_trim_count(messages, n)
            removed = store.delete_oldest_messages("k", n, tool_safe=True)
            assert _texts(removed) == _texts(messages[:m]), f"{n=}"
            assert _texts(store.get_messages("k")) == _texts(messages[m:]), f"{n=}"
        store.set_messages("k", messages)
        assert len(store.delete_oldest_messages("k", 3)) == 3  # tool_safe is opt-in
        assert store.delete_oldest_messages("k", 0, tool_safe=True) == []

    def test_tool_safe_trim_over_many_parallel_calls(self, store: BaseChatStore) -> None:
        """Removing a call of 40 parallel tools removes all 40 results with it, atomically.

        If this fails: the store looked at too few messages after the first n and left some
        of the results in front.
        """
        messages = tool_conversation(parallel=40)
        store.set_messages("k", messages)
        removed = store.delete_oldest_messages("k", 11, tool_safe=True)
        assert len(removed) == 11 + 40
        assert _texts(store.get_messages("k")) == ["a3"]
        with pytest.raises(TypeError, match="tool_safe"):
            store.delete_oldest_messages("k", 1, tool_safe="yes")  # type: ignore[arg-type]
        assert store.count_messages("k") == 1

    @pytest.mark.asyncio
    async def test_tool_safe_trim_async(self, store: BaseChatStore) -> None:
        """The async twins trim the same way (``adelete_oldest_messages`` and LlamaIndex's name).

        If this fails: an async trim ignored ``tool_safe``.
        """
        messages = tool_conversation()
        await store.aset_messages("k", messages)
        removed = await store.adelete_oldest_messages("k", 3, tool_safe=True)
        assert _texts(removed) == _texts(messages[:5])
        removed = await store.async_delete_oldest_messages("k", 3, tool_safe=True)
        assert _texts(removed) == _texts(messages[5:9])
