"""The backend kit: what a chat store backend is made of, written once for every backend.

A backend says what each operation does as a *plan* and how one step of a plan travels to
its server, once synchronously (:meth:`PlannedChatStore._execute`) and once asynchronously
(:meth:`PlannedChatStore._aexecute`). :class:`PlannedChatStore` provides the rest: every
public method of the protocol, sync and async, with their argument checks; retries with
backoff (:class:`RetryPolicy`) and an operation id carried by every attempt of a change
(:class:`Change`); key paging. So a backend writes each operation once, and both drivers
run the same multi-step protocol (conditional writes, conflicts, clean-up).

A plan is a generator (:data:`Plan`): it yields steps (whatever the backend's executor
takes: a script call, an SQL statement, an SDK call, or :class:`Sleep`), receives each
step's result, and returns the operation's answer::

    def _count_plan(self, key: str) -> Plan[int]:
        reply = yield Call("get_row", key)
        return 0 if reply is None else reply["count"]

A step whose conditional write found the data not as expected raises
:class:`ConflictError` in the executor; the drivers throw it into the plan, which may read
again and retry (with :class:`Sleep` steps between). Any other error leaves the plan (the
executor raises core errors, e.g. :class:`BackendUnavailableError` for a transport failure)
and, when it is a transport failure, the whole plan runs again per the store's retry policy,
as a new plan made by the same factory.

Also here: lazy and per-event-loop clients (:class:`Lazy`, :class:`PerLoop`), moving a
password out of a URL (:func:`split_password`), masking one (:func:`mask_url`), leaving
secrets out of dumped client options (:func:`without_secrets`), and the
argument checks every backend shares (:func:`check_window`, :func:`check_index`,
:func:`window`).
"""

from __future__ import annotations

import asyncio
import functools
from abc import abstractmethod
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import Field

from llama_index.storage.chat_store.core._lazy import Lazy, PerLoop
from llama_index.storage.chat_store.core._plans import (
    Change,
    ConflictError,
    Plan,
    Sleep,
    adrive,
    drive,
)
from llama_index.storage.chat_store.core.catalog import (
    ConversationInfo,
    ConversationPage,
    check_listing,
    check_metadata,
    conversation_not_found,
)
from llama_index.storage.chat_store.core.errors import (
    BackendUnavailableError,
    NotSentError,
    corrupt_data_remedy,
    removal_error,
)
from llama_index.storage.chat_store.core.messages import (
    ChatMessage,
    coerce_message,
    coerce_messages,
    copy_message,
    copy_messages,
    messages_removed,
)
from llama_index.storage.chat_store.core.registry import (
    NOT_BOOL,
    mask_url,
    split_password,
    without_secrets,
)
from llama_index.storage.chat_store.core.retries import (
    RetryPolicy,
    StepRetries,
    acall_with_retries,
    call_with_retries,
)
from llama_index.storage.chat_store.core.store import (
    BaseChatStore,
    check_flag,
    check_index,
    check_window,
    window,
)
from llama_index.storage.chat_store.core.tools import safe_read

__all__ = [
    "NOT_BOOL",
    "Change",
    "ConflictError",
    "Lazy",
    "PerLoop",
    "Plan",
    "PlannedChatStore",
    "RetryPolicy",
    "Sleep",
    "adrive",
    "check_index",
    "check_window",
    "coerce_message",
    "coerce_messages",
    "copy_message",
    "copy_messages",
    "corrupt_data_remedy",
    "drive",
    "mask_url",
    "messages_removed",
    "removal_error",
    "split_password",
    "window",
    "without_secrets",
]
T = TypeVar("T")


@functools.lru_cache(maxsize=64)
def _policy(retries: int, backoff: float, deadline: float) -> RetryPolicy:
    # Made once per configuration: building a frozen dataclass on every call costs more
    # than the rest of the store's own work on a call.
    return RetryPolicy(retries, backoff, deadline)


def _looks(change: Change, error: BackendUnavailableError) -> ConflictError:
    """What a plan gets for a step not resent that failed after it may have reached the server."""
    change.check = True
    return ConflictError(f"{error} (not sent again: the plan looks whether it was applied)")


class PlannedChatStore(BaseChatStore):
    """The chat store protocol over plans: a backend supplies plans and a step executor.

    Subclasses implement the ``_*_plan`` hooks (each returns a new generator; a change's
    hook receives the call's :class:`Change`), :meth:`_execute` and, with a native async
    driver, :meth:`_aexecute` (by default the sync executor runs in a worker thread). Every
    public method, sync and async, is written here once: keys are checked, messages
    coerced, windows and indices validated, and the plan run through the retry policy.

    A call that fails for want of the server (the executor raises
    :class:`BackendUnavailableError`) is tried again, up to ``retries`` more times with
    exponential backoff and jitter (from ``retry_backoff`` seconds, doubling) within
    ``retry_deadline`` seconds, each attempt a new plan. Every attempt of a change carries
    the same operation id; when the retries run out, the error says whether nothing was
    applied or the outcome is unknown.
    """

    _resend_steps: ClassVar[bool] = False
    """Retry each step rather than the whole plan (every write idempotent or conditional).

    A conditional step that conflicts after a resend sets ``change.check`` (its own lost
    attempt may be what it conflicted with): the plan looks for ``change.id``, then clears it.
    A step :meth:`_resendable` refuses is never sent twice (the plan looks the same way).
    """

    retries: Annotated[int, NOT_BOOL] = Field(default=3, ge=0)
    """Times a call that failed for want of the server is tried again (0: never)."""
    retry_backoff: Annotated[float, NOT_BOOL] = Field(default=0.05, ge=0)
    """Seconds before the first retry, doubling for each next one (jittered)."""
    retry_deadline: Annotated[float, NOT_BOOL] = Field(default=10.0, gt=0)
    """Seconds after which a failing call stops retrying."""

    def __init__(self, /, **data: Any) -> None:
        """Build the store from its fields (a backend's own ``__init__`` passes them on)."""
        super().__init__(**data)

    # -- what a backend provides --------------------------------------------------------------

    @abstractmethod
    def _execute(self, step: Any) -> Any:
        """Send one step to the server and return its result, raising core errors.

        Raises :class:`ConflictError` for a conditional step whose condition failed.
        """

    async def _aexecute(self, step: Any) -> Any:
        """Async :meth:`_execute`; by default the sync one, in a worker thread."""
        return await asyncio.to_thread(self._execute, step)

    @abstractmethod
    def _get_plan(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        """Read ``messages[offset:][:limit]`` (the window is checked already)."""

    @abstractmethod
    def _count_plan(self, key: str) -> Plan[int]:
        """Count the messages."""

    @abstractmethod
    def _add_plan(
        self, key: str, messages: list[ChatMessage], idx: int | None, change: Change
    ) -> Plan[None]:
        """Append ``messages`` (one or more), or insert the one message at ``idx``."""

    @abstractmethod
    def _set_plan(self, key: str, messages: list[ChatMessage], change: Change) -> Plan[None]:
        """Replace the conversation (``[]``: remove it)."""

    @abstractmethod
    def _delete_all_plan(self, key: str, change: Change) -> Plan[list[ChatMessage] | None]:
        """Remove the conversation and return what it held."""

    @abstractmethod
    def _delete_at_plan(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        """Remove and return the message at ``idx`` (``None`` when out of range)."""

    def _pop_plan(self, key: str, change: Change) -> Plan[ChatMessage | None]:
        """Remove and return the last message (by default: the one at -1)."""
        return self._delete_at_plan(key, -1, change)

    @abstractmethod
    def _oldest_plan(
        self, key: str, n: int, change: Change, tool_safe: bool
    ) -> Plan[list[ChatMessage]]:
        """Remove and return the first ``n`` messages (``n`` > 0).

        With ``tool_safe`` also the tool results that would then lead the conversation, in the
        same atomic change: the count grows by
        :func:`~llama_index.storage.chat_store.core.tools.safe_trim_count` over what the
        change reads (:func:`~llama_index.storage.chat_store.core.tools.safe_trim_plan` reads
        by position; :func:`~llama_index.storage.chat_store.core.tools.is_tool_result_json`
        tells a stored message).
        """

    @abstractmethod
    def _keys_plan(self, cursor: Any) -> Plan[tuple[Sequence[str], Any]]:
        """Read the page of keys at ``cursor`` (``None``: the first).

        Returns the keys and the next page's cursor, ``None`` after the last page.
        """

    @abstractmethod
    def _clear_plan(self) -> Plan[None]:
        """Remove every conversation of this store."""

    # The catalog (Capability.CATALOG): a backend that keeps one overrides these three.

    def _catalog_plan(self, prefix: str, after: str | None, limit: int) -> Plan[ConversationPage]:
        """Read the page of conversations whose key starts with ``prefix``, after ``after``."""
        raise self._no_catalog()

    def _conversation_plan(self, key: str) -> Plan[ConversationInfo | None]:
        """Read one conversation's catalog entry (``None``: no messages)."""
        raise self._no_catalog()

    def _metadata_plan(
        self, key: str, changes: dict[str, str | None], change: Change
    ) -> Plan[ConversationInfo | None]:
        """Merge ``changes`` (``{name: JSON text or None}``) into the metadata, atomically.

        Returns the entry after the merge, ``None`` when the conversation holds no messages;
        raises :class:`PayloadTooLargeError` (:func:`merged_metadata`) changing nothing.
        """
        raise self._no_catalog()

    # -- running plans ------------------------------------------------------------------------

    @property
    def _retry_policy(self) -> RetryPolicy:
        return _policy(self.retries, self.retry_backoff, self.retry_deadline)

    def _drive(self, plan: Plan[T]) -> T:
        """Run one attempt of a plan (a backend may wrap it, e.g. in a transaction)."""
        return drive(plan, self._execute)

    async def _adrive(self, plan: Plan[T]) -> T:
        """Async :meth:`_drive`."""
        return await adrive(plan, self._aexecute)

    def _resendable(self, step: Any) -> bool:
        """Whether a store with ``_resend_steps`` may send ``step`` again after it failed.

        A write whose resend could apply it twice is not: a creation of entities that another
        writer may have removed meanwhile, which leaves the resend nothing to fail on. When
        such a step fails after it may have reached the server, the plan gets a
        :class:`ConflictError` with ``change.check`` set, and looks whether it landed. By
        default: the step's ``resend`` attribute, when it has one.
        """
        return bool(getattr(step, "resend", True))

    def _resending(self, change: Change | None) -> Callable[[Any], Any]:
        """The executor of a store with ``_resend_steps``: each step tried again on its own."""
        steps = StepRetries(self._retry_policy, mutates=change is not None)

        def execute(step: Any) -> Any:
            resend = change is None or self._resendable(step)
            try:
                return steps.call(functools.partial(self._execute, step), resend=resend)
            except ConflictError:
                if change is not None and steps.resent:
                    change.check = True  # it may have conflicted with its own lost attempt
                raise
            except BackendUnavailableError as exc:
                if resend or change is None or not steps.resent:
                    raise
                raise _looks(change, exc) from exc

        return execute

    def _aresending(self, change: Change | None) -> Callable[[Any], Awaitable[Any]]:
        """Async :meth:`_resending`."""
        steps = StepRetries(self._retry_policy, mutates=change is not None)

        async def execute(step: Any) -> Any:
            resend = change is None or self._resendable(step)
            try:
                return await steps.acall(functools.partial(self._aexecute, step), resend=resend)
            except ConflictError:
                if change is not None and steps.resent:
                    change.check = True
                raise
            except BackendUnavailableError as exc:
                if resend or change is None or not steps.resent:
                    raise
                raise _looks(change, exc) from exc

        return execute

    def _read(self, make: Callable[[], Plan[T]]) -> T:
        """Run a plan that changes nothing: a new one for each attempt."""
        if self._resend_steps:
            return drive(make(), self._resending(None))
        return call_with_retries(lambda: self._drive(make()), self._retry_policy, mutates=False)

    async def _aread(self, make: Callable[[], Plan[T]]) -> T:
        """Async :meth:`_read`."""
        if self._resend_steps:
            return await adrive(make(), self._aresending(None))
        return await acall_with_retries(
            lambda: self._adrive(make()), self._retry_policy, mutates=False
        )

    def _change(self, make: Callable[[Change], Plan[T]]) -> T:
        """Run a change: every attempt is a new plan carrying the same :class:`Change`."""
        change = Change()
        if self._resend_steps:
            return drive(make(change), self._resending(change))

        def attempt() -> T:
            change.attempts += 1
            try:
                return self._drive(make(change))
            except NotSentError:
                raise
            except BaseException:
                change.check = True  # it may have been applied: a resend looks first
                raise

        return call_with_retries(attempt, self._retry_policy, mutates=True)

    async def _achange(self, make: Callable[[Change], Plan[T]]) -> T:
        """Async :meth:`_change`."""
        change = Change()
        if self._resend_steps:
            return await adrive(make(change), self._aresending(change))

        async def attempt() -> T:
            change.attempts += 1
            try:
                return await self._adrive(make(change))
            except NotSentError:
                raise
            except BaseException:
                change.check = True
                raise

        return await acall_with_retries(attempt, self._retry_policy, mutates=True)

    def _window_plan(
        self, key: str, offset: int, limit: int | None, tool_safe: bool
    ) -> Plan[list[ChatMessage]]:
        """The backend's read of the window, or of the window widened over tool exchanges."""
        if not tool_safe:
            return self._get_plan(key, offset, limit)
        return self._tool_safe_plan(key, offset, limit)

    def _tool_safe_plan(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        rule = safe_read(offset, limit)
        request = next(rule)
        while True:
            got = yield from self._get_plan(key, *request)
            try:
                request = rule.send(got)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    # -- sync API -----------------------------------------------------------------------------

    def get_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Return ``messages[offset:][:limit]`` (``[]`` for a missing key).

        ``tool_safe=True`` widens the window over the tool exchanges it cuts (see
        :meth:`BaseChatStore.get_messages`), reading them in the same request as the window.
        """
        key = self._check_key(key)
        check_window(offset, limit, tool_safe)
        return self._read(lambda: self._window_plan(key, offset, limit, tool_safe))

    def count_messages(self, key: str) -> int:
        """Return the number of messages (0 for a missing key)."""
        key = self._check_key(key)
        return self._read(lambda: self._count_plan(key))

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append ``message`` atomically, or insert it at ``idx`` like ``list.insert``."""
        key = self._check_key(key)
        batch = [coerce_message(message, copy=False)]
        if idx is not None:
            check_index("idx", idx)
        self._change(lambda change: self._add_plan(key, batch, idx, change))

    def add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Append ``messages`` atomically, in order (``[]`` makes no call)."""
        key = self._check_key(key)
        batch = coerce_messages(messages, copy=False)
        if batch:
            self._change(lambda change: self._add_plan(key, batch, None, change))

    def set_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Replace the conversation atomically (``[]`` removes it)."""
        key = self._check_key(key)
        batch = coerce_messages(messages, copy=False)
        self._change(lambda change: self._set_plan(key, batch, change))

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Remove the conversation; return its messages, or ``None`` if it had none."""
        key = self._check_key(key)
        return self._change(lambda change: self._delete_all_plan(key, change)) or None

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove and return the message at ``idx``; ``None`` when out of range."""
        key = self._check_key(key)
        check_index("idx", idx)
        return self._change(lambda change: self._delete_at_plan(key, idx, change))

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Remove and return the last message; ``None`` when there is none."""
        key = self._check_key(key)
        return self._change(lambda change: self._pop_plan(key, change))

    def delete_oldest_messages(
        self, key: str, n: int, *, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Remove and return the first ``n`` messages (fewer if shorter).

        ``tool_safe=True`` also removes the tool results that would lead what is left.
        """
        key = self._check_key(key)
        check_flag("tool_safe", tool_safe)
        if check_index("n", n) <= 0:
            return []
        return self._change(lambda change: self._oldest_plan(key, n, change, tool_safe))

    def iter_keys(self) -> Iterator[str]:
        """Yield this store's keys holding messages, a page per call."""
        keys, cursor = self._read(lambda: self._keys_plan(None))
        yield from keys
        while cursor is not None:
            keys, cursor = self._read(functools.partial(self._keys_plan, cursor))
            yield from keys

    def clear(self) -> None:
        """Remove every conversation of this store."""
        self._read(self._clear_plan)

    def list_conversations(
        self, prefix: str | None = None, after: str | None = None, limit: int = 100
    ) -> ConversationPage:
        """Return a page of conversations (see :meth:`BaseChatStore.list_conversations`)."""
        check_listing(prefix, after, limit)
        return self._read(lambda: self._catalog_plan(prefix or "", after, limit))

    def get_conversation(self, key: str) -> ConversationInfo | None:
        """Return the catalog entry of ``key`` (``None``: no messages)."""
        key = self._check_key(key)
        return self._read(lambda: self._conversation_plan(key))

    def set_metadata(self, key: str, metadata: Mapping[str, Any]) -> ConversationInfo:
        """Merge ``metadata`` into the conversation's (see :meth:`BaseChatStore.set_metadata`)."""
        key = self._check_key(key)
        changes = check_metadata(metadata)
        info = self._change(lambda change: self._metadata_plan(key, changes, change))
        if info is None:
            raise conversation_not_found(key)
        return info

    # -- async API ----------------------------------------------------------------------------

    async def aget_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Async :meth:`get_messages`."""
        key = self._check_key(key)
        check_window(offset, limit, tool_safe)
        return await self._aread(lambda: self._window_plan(key, offset, limit, tool_safe))

    async def acount_messages(self, key: str) -> int:
        """Async :meth:`count_messages`."""
        key = self._check_key(key)
        return await self._aread(lambda: self._count_plan(key))

    async def aadd_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Async :meth:`add_message`."""
        key = self._check_key(key)
        batch = [coerce_message(message, copy=False)]
        if idx is not None:
            check_index("idx", idx)
        await self._achange(lambda change: self._add_plan(key, batch, idx, change))

    async def aadd_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`add_messages`."""
        key = self._check_key(key)
        batch = coerce_messages(messages, copy=False)
        if batch:
            await self._achange(lambda change: self._add_plan(key, batch, None, change))

    async def aset_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`set_messages`."""
        key = self._check_key(key)
        batch = coerce_messages(messages, copy=False)
        await self._achange(lambda change: self._set_plan(key, batch, change))

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        """Async :meth:`delete_messages`."""
        key = self._check_key(key)
        return await self._achange(lambda change: self._delete_all_plan(key, change)) or None

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Async :meth:`delete_message`."""
        key = self._check_key(key)
        check_index("idx", idx)
        return await self._achange(lambda change: self._delete_at_plan(key, idx, change))

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        """Async :meth:`delete_last_message`."""
        key = self._check_key(key)
        return await self._achange(lambda change: self._pop_plan(key, change))

    async def adelete_oldest_messages(
        self, key: str, n: int, *, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Async :meth:`delete_oldest_messages`."""
        key = self._check_key(key)
        check_flag("tool_safe", tool_safe)
        if check_index("n", n) <= 0:
            return []
        return await self._achange(lambda change: self._oldest_plan(key, n, change, tool_safe))

    async def aiter_keys(self) -> AsyncIterator[str]:
        """Async :meth:`iter_keys`."""
        cursor: Any = None
        while True:
            keys, cursor = await self._aread(functools.partial(self._keys_plan, cursor))
            for key in keys:
                yield key
            if cursor is None:
                return

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        await self._aread(self._clear_plan)

    async def alist_conversations(
        self, prefix: str | None = None, after: str | None = None, limit: int = 100
    ) -> ConversationPage:
        """Async :meth:`list_conversations`."""
        check_listing(prefix, after, limit)
        return await self._aread(lambda: self._catalog_plan(prefix or "", after, limit))

    async def aget_conversation(self, key: str) -> ConversationInfo | None:
        """Async :meth:`get_conversation`."""
        key = self._check_key(key)
        return await self._aread(lambda: self._conversation_plan(key))

    async def aset_metadata(self, key: str, metadata: Mapping[str, Any]) -> ConversationInfo:
        """Async :meth:`set_metadata`."""
        key = self._check_key(key)
        changes = check_metadata(metadata)
        info = await self._achange(lambda change: self._metadata_plan(key, changes, change))
        if info is None:
            raise conversation_not_found(key)
        return info
