"""The chat store API over the Redis list layout, shared by the redis and upstash stores.

A subclass says only how one script call travels (:meth:`ListChatStore._execute` and
:meth:`ListChatStore._aexecute`, raising core errors) and how to scan for existing lists;
the statements, replies, checks and paging are written once, here and in :mod:`._layout`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import cached_property
from typing import Any, TypeVar

from pydantic import AliasChoices, Field

from llama_index.storage.chat_store.core import (
    BaseChatStore,
    Capability,
    ChatMessage,
    CorruptDataError,
    InvalidKeyError,
    coerce_message,
    coerce_messages,
)
from llama_index.storage.chat_store.core.retries import (
    RetryPolicy,
    acall_with_retries,
    call_with_retries,
)
from llama_index.storage.chat_store.core.store import check_window
from llama_index.storage.chat_store.redis._layout import KeysPage, ListLayout, Op

__all__ = ["ListChatStore"]

T = TypeVar("T")


def _index(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__qualname__}")
    return value


_RECORD_MS = 300_000
"""Least time a conversation's record of changes outlives its last change."""


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


class ListChatStore(BaseChatStore):
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
    retries: int = Field(default=3, ge=0)
    """Times a call that failed for want of the server is tried again (0: never)."""
    retry_backoff: float = Field(default=0.05, ge=0)
    """Seconds before the first retry, doubling for each next one (jittered)."""
    retry_deadline: float = Field(default=10.0, gt=0)
    """Seconds after which a failing call stops retrying."""

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
    def _execute(self, op: Op[Any]) -> Any:
        """Run one script call and return the raw reply, raising core errors."""

    @abstractmethod
    async def _aexecute(self, op: Op[Any]) -> Any:
        """Async :meth:`_execute`."""

    @abstractmethod
    def _scan_lists(self, pattern: str) -> Iterator[str]:
        """Yield the names of LIST keys matching the glob ``pattern`` (may repeat a name)."""

    @property
    def _retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.retry_backoff, self.retry_deadline)

    @property
    def _client_resends(self) -> bool:
        """Whether the client may resend a call by itself (see :class:`ListLayout`)."""
        return False

    def _run(self, op: Op[T]) -> T:
        def attempt() -> T:
            try:
                reply = self._execute(op)
            except BaseException:
                op.mark_sent()  # it may have been applied: a resend searches the record
                raise
            return op.decode(reply)

        return call_with_retries(attempt, self._retry_policy, mutates=op.mutates)

    async def _arun(self, op: Op[T]) -> T:
        async def attempt() -> T:
            try:
                reply = await self._aexecute(op)
            except BaseException:
                op.mark_sent()  # it may have been applied: a resend searches the record
                raise
            return op.decode(reply)

        return await acall_with_retries(attempt, self._retry_policy, mutates=op.mutates)

    # -- the calls, built once for both paths -----------------------------------------------

    def _get_op(self, key: str, offset: int, limit: int | None) -> Op[list[ChatMessage]]:
        key = self._check_key(key)
        check_window(offset, limit)
        return self._layout.window(key, offset, limit)

    def _add_op(self, key: str, message: ChatMessage, idx: int | None) -> Op[None]:
        key = self._check_key(key)
        message = coerce_message(message, copy=False)  # serialized before we return
        if idx is None:
            return self._layout.append(key, [message])
        return self._layout.insert(key, _index("idx", idx), message)

    def _add_many_op(self, key: str, messages: Sequence[ChatMessage]) -> Op[None] | None:
        key = self._check_key(key)
        coerced = coerce_messages(messages, copy=False)
        return self._layout.append(key, coerced) if coerced else None

    def _set_op(self, key: str, messages: Sequence[ChatMessage]) -> Op[None]:
        key = self._check_key(key)
        return self._layout.replace(key, coerce_messages(messages, copy=False))

    def _pop_first_op(self, key: str, n: int) -> Op[list[ChatMessage]] | None:
        key = self._check_key(key)
        return self._layout.pop_first(key, n) if _index("n", n) > 0 else None

    # -- sync API ----------------------------------------------------------------------------

    def get_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ChatMessage]:
        """Return ``messages[offset:][:limit]`` (``[]`` for a missing key).

        Only the window is read from Redis (one LRANGE inside the script).

        Raises:
            CorruptDataError: The key holds something other than chat messages.
            BackendUnavailableError: Redis cannot be reached.
        """
        return self._run(self._get_op(key, offset, limit))

    def count_messages(self, key: str) -> int:
        """Return the number of messages (0 for a missing key)."""
        return self._run(self._layout.count(self._check_key(key)))

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append ``message``, or insert it at ``idx`` like ``list.insert``; atomic."""
        self._run(self._add_op(key, message, idx))

    def add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Append ``messages`` in one atomic call (``[]`` changes nothing)."""
        op = self._add_many_op(key, messages)
        if op is not None:
            self._run(op)

    def set_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Replace the conversation atomically (``[]`` removes it).

        Raises:
            CorruptDataError: The key holds a value that is not a list (left untouched).
        """
        self._run(self._set_op(key, messages))

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Remove the conversation; return its messages, or ``None`` if there were none.

        Raises:
            CorruptDataError: Something removed was not a message; it is removed all the
                same (see the class docstring).
        """
        return self._run(self._layout.delete_all(self._check_key(key))) or None

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove the message at ``idx``, keeping the others' order and the expiry.

        Raises:
            CorruptDataError: Something removed was not a message; it is removed all the
                same (see the class docstring).
        """
        key = self._check_key(key)
        return self._run(self._layout.delete_at(key, _index("idx", idx)))

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Remove and return the last message (``None`` when there is none).

        Raises:
            CorruptDataError: Something removed was not a message; it is removed all the
                same (see the class docstring).
        """
        return self._run(self._layout.pop_last(self._check_key(key)))

    def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Remove and return the first ``n`` messages (fewer if shorter).

        Raises:
            CorruptDataError: Something removed was not a message; it is removed all the
                same (see the class docstring).
        """
        op = self._pop_first_op(key, n)
        return [] if op is None else self._run(op)

    def iter_keys(self) -> Iterator[str]:
        """Yield this store's live conversation keys from its registry, a page per call.

        Keys come in byte order. A key present for the whole iteration is yielded exactly
        once, however its conversation changes meanwhile.
        """
        cursor: str | None = None
        while True:
            page: KeysPage = self._run(self._layout.keys_page(cursor))
            yield from page.keys
            if page.cursor is None:
                return
            cursor = page.cursor

    def get_keys(self) -> list[str]:
        """Return this store's live conversation keys (never scans the keyspace)."""
        return list(self.iter_keys())

    def clear(self) -> None:
        """Remove every conversation in this store's registry, then the registry."""
        while self._run(self._layout.clear_page()):
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
                self._run(plain.window(key, 0, 1))
                self._run(plain.window(key, -1, 1))
            except (InvalidKeyError, CorruptDataError):
                continue
            if self._run(plain.adopt(key)):
                adopted.append(key)
        return adopted

    # -- async API ---------------------------------------------------------------------------

    async def aget_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ChatMessage]:
        """Async :meth:`get_messages`."""
        return await self._arun(self._get_op(key, offset, limit))

    async def acount_messages(self, key: str) -> int:
        """Async :meth:`count_messages`."""
        return await self._arun(self._layout.count(self._check_key(key)))

    async def aadd_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Async :meth:`add_message`."""
        await self._arun(self._add_op(key, message, idx))

    async def aadd_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`add_messages`."""
        op = self._add_many_op(key, messages)
        if op is not None:
            await self._arun(op)

    async def aset_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`set_messages`."""
        await self._arun(self._set_op(key, messages))

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        """Async :meth:`delete_messages`."""
        return await self._arun(self._layout.delete_all(self._check_key(key))) or None

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Async :meth:`delete_message`."""
        key = self._check_key(key)
        return await self._arun(self._layout.delete_at(key, _index("idx", idx)))

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        """Async :meth:`delete_last_message`."""
        return await self._arun(self._layout.pop_last(self._check_key(key)))

    async def adelete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Async :meth:`delete_oldest_messages`."""
        op = self._pop_first_op(key, n)
        return [] if op is None else await self._arun(op)

    async def aiter_keys(self) -> AsyncIterator[str]:
        """Async :meth:`iter_keys`."""
        cursor: str | None = None
        while True:
            page: KeysPage = await self._arun(self._layout.keys_page(cursor))
            for key in page.keys:
                yield key
            if page.cursor is None:
                return
            cursor = page.cursor

    async def aget_keys(self) -> list[str]:
        """Async :meth:`get_keys`."""
        return [key async for key in self.aiter_keys()]

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        while await self._arun(self._layout.clear_page()):
            pass
