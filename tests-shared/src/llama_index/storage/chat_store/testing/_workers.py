"""Functions run in worker processes by the multi-process conformance tests.

They live in an importable module so a spawned interpreter can unpickle them.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage


def append_many(factory: Callable[[], BaseChatStore], key: str, writer: int, n: int) -> int:
    """Append ``n`` messages ``w{writer}-{i}`` one call at a time; return how many."""
    with factory() as store:
        for i in range(n):
            store.add_message(key, ChatMessage(role="user", content=f"w{writer}-{i}"))
    return n


def pop_until_empty(factory: Callable[[], BaseChatStore], key: str) -> list[str]:
    """Pop the last message until none is left; return the texts popped."""
    popped: list[str] = []
    with factory() as store:
        while (message := store.delete_last_message(key)) is not None:
            popped.append(message.content or "")
    return popped
