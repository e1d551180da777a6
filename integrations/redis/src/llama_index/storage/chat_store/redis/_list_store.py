"""The chat store API over the Redis list layout, shared by the redis and upstash stores.

A subclass says only how one script call travels (:meth:`ListChatStore._execute` and
:meth:`ListChatStore._aexecute`, raising core errors) and how to scan for existing lists;
the statements, replies, checks and paging are written once, here and in :mod:`._layout`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any, TypeVar

from pydantic import AliasChoices, Field

from llama_index.storage.chat_store.core import (
    Capability,
    ChatMessage,
    CorruptDataError,
    InvalidKeyError,
)
from llama_index.storage.chat_store.core.backend import Change, Plan, PlannedChatStore
from llama_index.storage.chat_store.redis._layout import ListLayout, Op

__all__ = ["ListChatStore"]

T = TypeVar("T")


_RECORD_MS = 300_000
"""Least time a conversation's record of changes outlives its last change."""


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


class ListChatStore(PlannedChatStore):
    """A chat store keeping each conversation as one Redis list (see :mod:`._layout`).

    Every operation is one script call: one round trip, atomic on the server, so concurrent
    writers never lose a message and two concurrent removals never return the same one.

    Corrupt data (an element that is not message JSON, or not UTF-8) follows one rule on
    every Redis-family store: reads raise :class:`CorruptDataError` naming the key and
    position and change nothing; a removal removes everything it was asked to (atomically,
    so corrupt data can always be deleted), then raises :class:`CorruptDataError` naming
    the key and the first unreadable position it removed, with the raw data on ``data``.
    ``set_messages(key, [])`` removes a conversation without reading it.

    A call that fails on the way (a dropped connection, a timeout, a server busy loading) is
    retried by the store, up to ``retries`` more times with exponential backoff and jitter
    (from ``retry_backoff`` seconds, doubling) within ``retry_deadline`` seconds. Every
    change carries an operation id, made once per call and checked in the same script that
    applies it, so a retry of a change whose reply was lost applies nothing twice and
    returns what the first attempt returned (a removal returns the messages it removed).
    When the retries run out the call raises :class:`BackendUnavailableError`, whose message
    says whether the change was applied: "nothing was applied" when no attempt reached
    the server, otherwise "the outcome is unknown" (it was applied once or not at all).
    """

    namespace: str = ""
    """Prefix of every key. Empty (the default) reads and writes LlamaIndex's raw keys."""
    ttl: int | None = Field(default=None, gt=0, validation_alias=AliasChoices("ttl", "ttl_seconds"))
    """Seconds a conversation lives after its last change (``None``: forever)."""
    refresh_on_read: bool = False
    """Reads also push the expiry to now + ttl."""

    @cached_property
    def _layout(self) -> ListLayout:
        ttl_ms = 0 if self.ttl is None else self.ttl * 1000
        # The record of changes must outlive every retry of a call.
        record_ms = max(_RECORD_MS, int(self.retry_deadline * 2000))
        return ListLayout(
            self.namespace, ttl_ms, self.refresh_on_read, record_ms, self._client_resends
        )

    @property
    def capabilities(self) -> frozenset[Capability]:
        """Persistent, shared, expiring, natively async; EXACTLY_ONCE when ``retries`` > 0."""
        found = {Capability.PERSISTENT, Capability.SHARED, Capability.TTL, Capability.NATIVE_ASYNC}
        if self.retries > 0:
            found.add(Capability.EXACTLY_ONCE)
        return frozenset(found)

    # -- transport: what a subclass provides ------------------------------------------------

    @abstractmethod
    def _execute(self, step: Op[Any]) -> Any:
        """Run one script call and return the raw reply, raising core errors."""

    @abstractmethod
    async def _aexecute(self, step: Op[Any]) -> Any:
        """Async :meth:`_execute`."""

    @abstractmethod
    def _scan_lists(self, pattern: str) -> Iterator[str]:
        """Yield the names of LIST keys matching the glob ``pattern`` (may repeat a name)."""

    @property
    def _client_resends(self) -> bool:
        """Whether the client may resend a call by itself (see :class:`ListLayout`)."""
        return False

    # -- the plans: one script call each -------------------------------------------------------

    def _get_plan(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        return _one(self._layout.window(key, offset, limit))

    def _count_plan(self, key: str) -> Plan[int]:
        return _one(self._layout.count(key))

    def _add_plan(
        self, key: str, messages: list[ChatMessage], idx: int | None, change: Change
    ) -> Plan[None]:
        if idx is None:
            return _one(self._layout.append(key, messages, change))
        return _one(self._layout.insert(key, idx, messages[0], change))

    def _set_plan(self, key: str, messages: list[ChatMessage], change: Change) -> Plan[None]:
        return _one(self._layout.replace(key, messages, change))

    def _delete_all_plan(self, key: str, change: Change) -> Plan[list[ChatMessage] | None]:
        return _one(self._layout.delete_all(key, change))

    def _delete_at_plan(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        return _one(self._layout.delete_at(key, idx, change))

    def _pop_plan(self, key: str, change: Change) -> Plan[ChatMessage | None]:
        return _one(self._layout.pop_last(key, change))

    def _oldest_plan(self, key: str, n: int, change: Change) -> Plan[list[ChatMessage]]:
        return _one(self._layout.pop_first(key, n, change))

    def _keys_plan(self, cursor: Any) -> Plan[tuple[Sequence[str], Any]]:
        page = yield from _one(self._layout.keys_page(cursor))
        return page.keys, page.cursor

    def _clear_plan(self) -> Plan[None]:
        """Remove the registered conversations a page at a time, then the registry."""
        page = self._layout.clear_page()
        while (yield from _one(page)):
            pass

    def adopt(self, match: str = "*") -> list[str]:
        """Register existing conversations (e.g. written by LlamaIndex) so get_keys lists them.

        Scans the database for LIST keys under the namespace matching the glob ``match``,
        checks that their first and last elements are chat messages, and registers each with
        the expiry it already has; the data is not changed. Lists of other data and keys this
        store cannot take (too long) are skipped. Running it again is harmless.

        Returns:
            The keys adopted.
        """
        plain = ListLayout(self.namespace)
        adopted: list[str] = []
        for name in dict.fromkeys(self._scan_lists(_glob_escape(self.namespace) + match)):
            key = name[len(self.namespace) :]
            try:
                self._check_key(key)
                self._read(lambda: _one(plain.window(key, 0, 1)))  # noqa: B023 (run at once)
                self._read(lambda: _one(plain.window(key, -1, 1)))  # noqa: B023
            except (InvalidKeyError, CorruptDataError):
                continue
            if self._read(lambda: _one(plain.adopt(key))):  # noqa: B023
                adopted.append(key)
        return adopted


def _one(op: Op[T]) -> Plan[T]:
    """The plan of one script call: send it, decode its reply."""
    return op.decode((yield op))
