"""What a table layout provides: one plan (see :mod:`._io`) per store operation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from llama_index.storage.chat_store.azure._io import Plan
from llama_index.storage.chat_store.core import ChatMessage

__all__ = ["Layout"]


class Layout(Protocol):
    """Plans for every store operation; keys and messages arrive already checked/encoded."""

    def get_messages(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]: ...

    def count_messages(self, key: str) -> Plan[int]: ...

    def append(self, key: str, payloads: Sequence[dict[str, Any]]) -> Plan[None]: ...

    def insert_at(self, key: str, idx: int, payload: dict[str, Any]) -> Plan[None]: ...

    def replace(self, key: str, payloads: Sequence[dict[str, Any]]) -> Plan[None]: ...

    def delete_all(self, key: str) -> Plan[list[ChatMessage] | None]: ...

    def delete_at(self, key: str, idx: int) -> Plan[ChatMessage | None]: ...

    def pop_last(self, key: str) -> Plan[ChatMessage | None]: ...

    def delete_oldest(self, key: str, n: int) -> Plan[list[ChatMessage]]: ...

    def keys_page(self, token: Any) -> Plan[tuple[list[str], Any]]: ...

    def clear_plans(self) -> list[Callable[[], Plan[bool]]]: ...
