"""TablestoreChatStore: chat histories in Alibaba Cloud Tablestore."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_serializer

from llama_index.storage.chat_store.core import (
    BaseChatStore,
    Capability,
    ChatMessage,
    ChatStoreError,
    ConfigurationError,
    Lazy,
    PayloadTooLargeError,
    PerLoop,
    coerce_message,
    coerce_messages,
    message_to_json,
)
from llama_index.storage.chat_store.core.retries import (
    RetryPolicy,
    acall_with_retries,
    call_with_retries,
    new_op_id,
)
from llama_index.storage.chat_store.core.store import check_window, window
from llama_index.storage.chat_store.tablestore import _llama_index_layout as legacy
from llama_index.storage.chat_store.tablestore import _native as native
from llama_index.storage.chat_store.tablestore._io import Call, Once, Op, run_async, run_sync
from llama_index.storage.chat_store.tablestore._sdk import (
    SDK_LOGGER,
    WritesResentOnlyIfRefused,
    format_traces_only_when_enabled,
    redact_logger,
    translate,
    ts,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_TABLE_NAME", "TablestoreChatStore"]

DEFAULT_TABLE_NAME = "llama_index_chat_store_v1"
MAX_VALUE_BYTES = 2 * 1024 * 1024
"""Tablestore's limit for one attribute value (a message in our layout)."""

R = TypeVar("R")
Layout = Literal["auto", "native", "llama_index"]
_RETRY_OPTIONS = {"retries": int, "retry_backoff": float, "retry_deadline": float}
_URL_OPTIONS = {"access_key_id", "access_key_secret", "sts_token", "layout", "scheme",
                *_RETRY_OPTIONS}  # fmt: skip
_FIELDS = {"layout", "sts_token", *_RETRY_OPTIONS}
"""Keyword arguments that are store fields; LlamaIndex's ``**kwargs`` are client options."""
_CLIENT_OPTIONS = (
    frozenset(inspect.signature(ts.OTSClient.__init__).parameters)
    - {"self", "kwargs", "end_point", "access_key_id", "access_key_secret", "instance_name"}
) | {
    # What the SDK's clients read from their **kwargs (tablestore 6.x); it ignores any
    # other name, so an unchecked typo would be dropped without a word.
    "encoding", "socket_timeout", "max_connection", "logger_name", "retry_policy",
    "ssl_version", "enable_native", "native_fallback", "extra_headers", "force_close",
    "keepalive_timeout",
}  # fmt: skip
_SECRET_WORDS = ("secret", "token", "password", "credential")


class TablestoreChatStore(BaseChatStore):
    """Chat histories in an Alibaba Cloud Tablestore table.

    ``layout="native"`` (ours) keeps one row per message in ``table_name`` (primary key
    ``session_id, gen, seq``) and one meta row per conversation in ``<table_name>_meta``:
    appends and pops are O(1) and atomic through conditional writes, windows and counts
    never read the whole conversation, and concurrent writers never lose a message.
    ``layout="llama_index"`` reads and writes LlamaIndex's ``TablestoreChatStore`` table (one
    row per conversation, ``history`` = JSON array), with conditional writes.
    ``layout="auto"`` (default) picks the layout from the table's primary key and creates
    native tables in :meth:`create_table_if_not_exist`.

    Credentials come from the arguments or the ``TABLESTORE_ACCESS_KEY_ID`` /
    ``TABLESTORE_ACCESS_KEY_SECRET`` environment variables. Constructing a store never
    connects. Raises :class:`BackendUnavailableError` when Tablestore cannot be reached,
    :class:`AuthenticationError` for rejected credentials, :class:`ConfigurationError` when
    the table does not exist (call :meth:`create_table_if_not_exist` once), and
    :class:`PayloadTooLargeError` for a message over 2 MB before any call.

    A call that fails for want of the server (a dropped connection, a refused one, a 5xx)
    is retried by the store, up to ``retries`` more times with exponential backoff and
    jitter (from ``retry_backoff`` seconds, doubling) within ``retry_deadline`` seconds.
    Every change carries an operation id, written into the conversation's record in the
    same conditional write that commits it: a retry of a change whose reply was lost finds
    it there, applies nothing and returns what the first application returned (see the
    README). When the retries run out the call raises :class:`BackendUnavailableError`
    saying whether nothing was applied or the outcome is unknown. The SDK itself never
    resends a change that may have been applied (only one the service refused).
    """

    endpoint: str | None = None
    instance_name: str | None = None
    access_key_id: str | None = None
    access_key_secret: SecretStr | None = Field(default=None, exclude=True)
    sts_token: SecretStr | None = Field(default=None, exclude=True)
    table_name: str = DEFAULT_TABLE_NAME
    layout: Layout = "auto"
    retries: int = Field(default=3, ge=0)
    """Times a call that failed for want of the server is tried again (0: never)."""
    retry_backoff: float = Field(default=0.05, ge=0)
    """Seconds before the first retry, doubling for each next one (jittered)."""
    retry_deadline: float = Field(default=10.0, gt=0)
    """Seconds after which a failing call stops retrying."""
    client_options: dict[str, Any] = Field(default_factory=dict)
    tablestore_client: Any = Field(default=None, exclude=True, repr=False)

    _own_sync: Lazy[Any] = PrivateAttr()
    _own_async: PerLoop[Any] = PrivateAttr()
    _resolved: str | None = PrivateAttr(default=None)
    _native_tables: native.Tables | None = PrivateAttr(default=None)

    def __init__(
        self,
        tablestore_client: Any = None,
        endpoint: str | None = None,
        instance_name: str | None = None,
        access_key_id: str | None = None,
        access_key_secret: str | SecretStr | None = None,
        table_name: str = DEFAULT_TABLE_NAME,
        **kwargs: Any,
    ) -> None:
        """Configure the store (LlamaIndex's signature, positional order included; never connects).

        Args:
            tablestore_client: An ``OTSClient`` to use instead of the connection arguments.
            endpoint: ``https://INSTANCE.REGION.ots.aliyuncs.com``.
            instance_name: The Tablestore instance.
            access_key_id: Defaults to ``$TABLESTORE_ACCESS_KEY_ID``.
            access_key_secret: Defaults to ``$TABLESTORE_ACCESS_KEY_SECRET``.
            table_name: The messages table (the meta table is ``<table_name>_meta``).
            **kwargs: ``layout``, ``sts_token``, ``retries``, ``retry_backoff``,
                ``retry_deadline``, ``client_options``; anything else is an
                ``OTSClient`` option (``socket_timeout``, ``max_connection``,
                ``retry_policy``, ``credentials_provider``, ``region``, ...), as in LlamaIndex.

        Raises:
            TypeError: A keyword argument that is neither a store field nor an ``OTSClient``
                option (named in the message).
            ConfigurationError: Neither a client nor a complete set of connection arguments.
        """
        fields = {k: kwargs.pop(k) for k in _FIELDS if k in kwargs}
        unknown = sorted(set(kwargs) - _CLIENT_OPTIONS - {"client_options"})
        if unknown:
            raise TypeError(
                f"TablestoreChatStore got unexpected keyword argument(s) "
                f"{', '.join(map(repr, unknown))}: neither a store field nor an OTSClient option"
            )
        options = {**kwargs.pop("client_options", {}), **kwargs}
        unknown = sorted(set(options) - _CLIENT_OPTIONS)
        if unknown:
            raise TypeError(f"client_options has unknown OTSClient option(s) {unknown}")
        if tablestore_client is None:
            access_key_id = access_key_id or os.environ.get("TABLESTORE_ACCESS_KEY_ID")
            access_key_secret = access_key_secret or os.environ.get("TABLESTORE_ACCESS_KEY_SECRET")
            required: list[tuple[str, object]] = [
                ("endpoint", endpoint), ("instance_name", instance_name),
            ]  # fmt: skip
            if "credentials_provider" not in options:
                required += [("access_key_id", access_key_id),
                             ("access_key_secret", access_key_secret)]  # fmt: skip
            missing = [name for name, value in required if not value]
            if missing:
                raise ConfigurationError(
                    f"TablestoreChatStore needs {', '.join(missing)} (or tablestore_client=)"
                )
            if not str(endpoint).startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"endpoint must start with https:// or http://: {endpoint}"
                )
        super().__init__(
            tablestore_client=tablestore_client, endpoint=endpoint, instance_name=instance_name,
            access_key_id=access_key_id, access_key_secret=access_key_secret,
            table_name=table_name, client_options=options, **fields,
        )  # fmt: skip

    @field_serializer("client_options")
    def _without_secrets(self, value: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in value.items() if not any(w in k for w in _SECRET_WORDS)}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from ``tablestore://INSTANCE@ENDPOINT-HOST[:PORT]/TABLE``.

        Query options: ``access_key_id``, ``access_key_secret``, ``sts_token``, ``layout``,
        ``scheme`` (``https`` by default; ``http`` for a local emulator), ``retries``,
        ``retry_backoff``, ``retry_deadline``. Keyword options override them. Credentials
        default to the ``TABLESTORE_ACCESS_KEY_*`` variables.

        Raises:
            ConfigurationError: The URL is not a tablestore URL or has unknown options.
        """
        parts = urlsplit(url)
        if parts.scheme != "tablestore" or not parts.username or not parts.hostname:
            raise ConfigurationError(
                "expected tablestore://INSTANCE@ENDPOINT-HOST/TABLE, got a URL without "
                f"{'an instance' if parts.scheme == 'tablestore' else 'the tablestore scheme'}"
            )
        query = dict(parse_qsl(parts.query))
        unknown = set(query) - _URL_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown tablestore URL options: {', '.join(sorted(unknown))}"
            )
        scheme = query.pop("scheme", "https")
        converted: dict[str, Any] = dict(query)
        for name, kind in _RETRY_OPTIONS.items():
            if name in query:
                try:
                    converted[name] = kind(query[name])
                except ValueError:
                    raise ConfigurationError(
                        f"tablestore URL option {name} must be a number, not {query[name]!r}"
                    ) from None
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        table = unquote(parts.path.strip("/")) or DEFAULT_TABLE_NAME
        settings: dict[str, Any] = {
            "endpoint": f"{scheme}://{host}",
            "instance_name": unquote(parts.username),
            "table_name": table,
            **converted,
            **options,
        }
        return cls(**settings)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """PERSISTENT, SHARED, NATIVE_ASYNC (``AsyncOTSClient``); EXACTLY_ONCE when retrying."""
        found = {Capability.PERSISTENT, Capability.SHARED, Capability.NATIVE_ASYNC}
        if self.retries > 0:
            found.add(Capability.EXACTLY_ONCE)
        return frozenset(found)

    # -- clients and drivers ------------------------------------------------------------

    @property
    def _where(self) -> str:
        if self.endpoint:
            return f"{self.endpoint} (instance {self.instance_name})"
        client = self.tablestore_client
        return f"{getattr(client, 'host', '?')} (instance {client.protocol.instance_name})"

    def _translate(self, exc: BaseException) -> ChatStoreError | None:
        return translate(exc, self._where, self.table_name)

    def _client_arguments(self) -> dict[str, Any]:
        if self.tablestore_client is not None:
            client = self.tablestore_client
            return {
                "end_point": client.host + client.path,
                "instance_name": client.protocol.instance_name,
                "credentials_provider": client.credentials_provider,
                "retry_policy": WritesResentOnlyIfRefused(client.retry_policy),
                "logger_name": SDK_LOGGER,
            }
        secret = self.access_key_secret
        extra = {"sts_token": self.sts_token.get_secret_value()} if self.sts_token else {}
        arguments = {
            "end_point": self.endpoint,
            "access_key_id": self.access_key_id,
            "access_key_secret": secret.get_secret_value() if secret is not None else None,
            "instance_name": self.instance_name,
            "logger_name": SDK_LOGGER,
            **extra,
            **self.client_options,
        }
        # A change resent by the SDK after a timeout could apply twice: the store retries
        # those itself, with the change's op id.
        arguments["retry_policy"] = WritesResentOnlyIfRefused(arguments.get("retry_policy"))
        # The SDK traces request headers (key id, STS token, signature) at DEBUG, also on a
        # logger the caller named.
        redact_logger(arguments["logger_name"])
        return arguments

    def model_post_init(self, context: Any, /) -> None:
        """Prepare the clients, made on first use: one sync, one async per event loop."""
        logger = getattr(self.tablestore_client, "logger", None)
        if isinstance(logger, logging.Logger):  # a caller's client traces credentials too
            redact_logger(logger.name)
        self._own_sync = Lazy(
            lambda: format_traces_only_when_enabled(ts.OTSClient(**self._client_arguments()))
        )
        # An AsyncOTSClient's HTTP session belongs to its loop: closed there at shutdown.
        self._own_async = PerLoop(
            lambda: format_traces_only_when_enabled(ts.AsyncOTSClient(**self._client_arguments())),
            aclose=lambda client: client.close(),
        )

    def _sync_client(self) -> Any:
        if self.tablestore_client is not None:
            return self.tablestore_client
        return self._own_sync.get()

    @property
    def _retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.retry_backoff, self.retry_deadline)

    def _run(self, make: Callable[[], Op[R]]) -> R:
        """Run a read (a new operation for each attempt)."""
        return call_with_retries(
            lambda: run_sync(self._sync_client(), make(), self._translate),
            self._retry_policy,
            mutates=False,
        )

    async def _arun(self, make: Callable[[], Op[R]]) -> R:
        """Async :meth:`_run`."""

        async def attempt() -> R:
            return await run_async(self._own_async.get(), make(), self._translate)

        return await acall_with_retries(attempt, self._retry_policy, mutates=False)

    def _change(self, make: Callable[[Once], Op[R]]) -> R:
        """Run a change: every attempt carries the same op id."""
        once = Once(new_op_id())
        return call_with_retries(
            lambda: run_sync(self._sync_client(), make(once.next_attempt()), self._translate),
            self._retry_policy,
            mutates=True,
        )

    async def _achange(self, make: Callable[[Once], Op[R]]) -> R:
        """Async :meth:`_change`."""
        once = Once(new_op_id())

        async def attempt() -> R:
            op = make(once.next_attempt())
            return await run_async(self._own_async.get(), op, self._translate)

        return await acall_with_retries(attempt, self._retry_policy, mutates=True)

    def close(self) -> None:
        """Release the sync client's connections; the store reconnects if used again."""
        client = self._own_sync.take()
        if client is not None:
            client.connection.pool.clear()

    async def aclose(self) -> None:
        """Close this event loop's async client and the sync client."""
        self.close()
        client = self._own_async.take()
        if client is not None:
            await client.close()

    # -- layout -------------------------------------------------------------------------

    @property
    def _tables(self) -> native.Tables:
        # One per store: it carries what this store last saw of each conversation.
        tables = self._native_tables
        if tables is None or tables.messages != self.table_name:
            tables = native.Tables(self.table_name, f"{self.table_name}_meta")
            self._native_tables = tables
        return tables

    def _layout_op(self) -> Op[str]:
        if self._resolved is None:
            if self.layout != "auto":
                self._resolved = self.layout
            else:
                described = yield Call("describe_table", (self.table_name,))
                names = [column[0] for column in described.table_meta.schema_of_primary_key]
                self._resolved = "llama_index" if names == ["session_id"] else "native"
        return self._resolved

    def _create_op(self) -> Op[None]:
        existing = set((yield Call("list_table", ())))
        wanted: list[tuple[str, list[tuple[str, str]]]] = []
        if self.table_name in existing:
            layout = yield from self._layout_op()
        else:
            layout = "llama_index" if self.layout == "llama_index" else "native"
            self._resolved = layout
            primary_key = (
                legacy.PRIMARY_KEY if layout == "llama_index" else native.MESSAGE_PRIMARY_KEY
            )
            wanted.append((self.table_name, primary_key))
        if layout == "native" and self._tables.meta not in existing:
            wanted.append((self._tables.meta, native.META_PRIMARY_KEY))
        for name, primary_key in wanted:
            meta = ts.TableMeta(name, primary_key)
            options = ts.TableOptions(time_to_live=-1, max_version=1)
            throughput = ts.ReservedThroughput(ts.CapacityUnit(0, 0))
            yield Call("create_table", (meta, options, throughput))

    def create_table_if_not_exist(self) -> None:
        """Create the table(s) this store needs when missing (idempotent).

        With ``layout="auto"`` an existing table is used in the layout its primary key shows;
        a missing one is created in our layout (messages table plus ``<table>_meta``).
        """
        self._run(self._create_op)

    async def acreate_table_if_not_exist(self) -> None:
        """Async :meth:`create_table_if_not_exist`."""
        await self._arun(self._create_op)

    # -- operations, once for both drivers ------------------------------------------------

    def _jsons(self, messages: Sequence[ChatMessage]) -> list[str]:
        jsons = [message_to_json(m) for m in messages]
        for text in jsons:
            size = len(text.encode("utf-8"))
            if size > MAX_VALUE_BYTES:
                raise PayloadTooLargeError(
                    f"a message of {size} bytes exceeds Tablestore's {MAX_VALUE_BYTES}-byte "
                    "limit for one value; nothing was written"
                )
        return jsons

    def _get_op(self, key: str, offset: int, limit: int | None) -> Op[list[ChatMessage]]:
        if (yield from self._layout_op()) == "native":
            return (yield from native.get(self._tables, key, offset, limit))
        messages = yield from legacy.read(self.table_name, key)
        return list(window(messages, offset, limit))

    def _count_op(self, key: str) -> Op[int]:
        if (yield from self._layout_op()) == "native":
            return (yield from native.count(self._tables, key))
        return (yield from legacy.count(self.table_name, key))

    def _add_op(
        self, key: str, messages: list[ChatMessage], idx: int | None, once: Once
    ) -> Op[None]:
        jsons = self._jsons(messages)
        if (yield from self._layout_op()) == "native":
            if idx is None:
                yield from native.add(self._tables, key, jsons, once)
            else:
                yield from native.insert(self._tables, key, idx, jsons[0], once)
            return

        def change(current: list[ChatMessage]) -> list[ChatMessage]:
            if idx is None:
                return current + messages
            current.insert(idx, messages[0])
            return current

        yield from legacy.mutate(self.table_name, key, change, message_to_json, once)

    def _set_op(self, key: str, messages: list[ChatMessage], once: Once) -> Op[None]:
        jsons = self._jsons(messages)
        if (yield from self._layout_op()) == "native":
            yield from native.set_all(self._tables, key, jsons, once)
        else:
            yield from legacy.replace(self.table_name, key, jsons, once)

    def _delete_all_op(self, key: str, once: Once) -> Op[list[ChatMessage] | None]:
        if (yield from self._layout_op()) == "native":
            return (yield from native.delete_all(self._tables, key, once))
        return (yield from legacy.remove(self.table_name, key, once))

    def _delete_at_op(self, key: str, idx: int, once: Once) -> Op[ChatMessage | None]:
        if (yield from self._layout_op()) == "native":
            return (yield from native.delete_at(self._tables, key, idx, once))

        def at(size: int) -> list[int]:
            return [idx % size] if -size <= idx < size else []

        taken = yield from legacy.take(self.table_name, key, at, message_to_json, once)
        return taken[0] if taken else None

    def _pop_op(self, key: str, once: Once) -> Op[ChatMessage | None]:
        if (yield from self._layout_op()) == "native":
            return (yield from native.pop_last(self._tables, key, once))
        return (yield from self._delete_at_op(key, -1, once))

    def _oldest_op(self, key: str, n: int, once: Once) -> Op[list[ChatMessage]]:
        if n <= 0:
            return []
        if (yield from self._layout_op()) == "native":
            return (yield from native.delete_oldest(self._tables, key, n, once))
        return (yield from legacy.take(
            self.table_name, key, lambda size: range(min(n, size)), message_to_json, once
        ))  # fmt: skip

    def _keys_op(self, start: Any) -> Op[tuple[list[str], Any]]:
        if (yield from self._layout_op()) == "native":
            return (yield from native.keys_page(self._tables, start))
        return (yield from legacy.keys_page(self.table_name, start))

    def _clear_op(self) -> Op[None]:
        if (yield from self._layout_op()) == "native":
            yield from native.clear(self._tables)
        else:
            yield from legacy.clear(self.table_name)

    # -- sync API -----------------------------------------------------------------------

    def get_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ChatMessage]:
        """Return ``messages[offset:][:limit]`` (native layout: reads only that window)."""
        key = self._check_key(key)
        check_window(offset, limit)
        return self._run(lambda: self._get_op(key, offset, limit))

    def count_messages(self, key: str) -> int:
        """Return the number of messages (native layout: one GetRow of the meta row)."""
        key = self._check_key(key)
        return self._run(lambda: self._count_op(key))

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append atomically, or insert at ``idx`` like ``list.insert``."""
        key = self._check_key(key)
        batch = [coerce_message(message, copy=False)]
        self._change(lambda once: self._add_op(key, batch, idx, once))

    def add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Append a batch atomically (one commit; ``[]`` makes no call)."""
        key = self._check_key(key)
        batch = coerce_messages(messages, copy=False)
        if batch:
            self._change(lambda once: self._add_op(key, batch, None, once))

    def set_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Replace the conversation atomically for readers (``[]`` removes the key)."""
        key = self._check_key(key)
        batch = coerce_messages(messages, copy=False)
        self._change(lambda once: self._set_op(key, batch, once))

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Remove the conversation; return its messages, or ``None`` if it had none.

        Damaged data never blocks the removal. When something removed cannot be read, the
        conversation is removed all the same, then :class:`CorruptDataError` is raised
        naming the key and the first unreadable position (none when the whole value or the
        meta row is unreadable), with the stored data in ``data``. ``set_messages(key, [])``
        removes a damaged conversation without raising.
        """
        key = self._check_key(key)
        return self._change(lambda once: self._delete_all_op(key, once))

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove the message at ``idx``; ``None`` when out of range.

        The position is resolved and removed on one state of the conversation (a concurrent
        append or pop never shifts it). When that message cannot be read it is removed all
        the same, then :class:`CorruptDataError` is raised naming the key and position, with
        the stored data in ``data``.
        """
        key = self._check_key(key)
        return self._change(lambda once: self._delete_at_op(key, idx, once))

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Remove and return the last message; concurrent callers never get the same one.

        An unreadable last message is removed, then :class:`CorruptDataError` is raised (key,
        position, stored data), as in :meth:`delete_message`.
        """
        key = self._check_key(key)
        return self._change(lambda once: self._pop_op(key, once))

    def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Remove and return the first ``n`` messages.

        When one of them cannot be read they are all removed, then :class:`CorruptDataError`
        is raised naming the key and the first unreadable position, with its stored data.
        """
        key = self._check_key(key)
        return self._change(lambda once: self._oldest_op(key, n, once))

    def iter_keys(self) -> Iterator[str]:
        """Yield the keys holding messages, a page of meta rows at a time."""
        start: Any = None
        while True:
            keys, start = self._run(functools.partial(self._keys_op, start))
            yield from keys
            if not start:
                return

    def clear(self) -> None:
        """Remove every conversation of this store (every row of its table(s))."""
        self._run(self._clear_op)

    def clear_store(self) -> None:
        """Remove every conversation (LlamaIndex's name for :meth:`clear`)."""
        self.clear()

    # -- async API (AsyncOTSClient, one per event loop) -----------------------------------

    async def aget_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ChatMessage]:
        """Async :meth:`get_messages`."""
        key = self._check_key(key)
        check_window(offset, limit)
        return await self._arun(lambda: self._get_op(key, offset, limit))

    async def acount_messages(self, key: str) -> int:
        """Async :meth:`count_messages`."""
        key = self._check_key(key)
        return await self._arun(lambda: self._count_op(key))

    async def aadd_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Async :meth:`add_message`."""
        key = self._check_key(key)
        batch = [coerce_message(message, copy=False)]
        await self._achange(lambda once: self._add_op(key, batch, idx, once))

    async def aadd_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`add_messages`."""
        key = self._check_key(key)
        batch = coerce_messages(messages, copy=False)
        if batch:
            await self._achange(lambda once: self._add_op(key, batch, None, once))

    async def aset_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`set_messages`."""
        key = self._check_key(key)
        batch = coerce_messages(messages, copy=False)
        await self._achange(lambda once: self._set_op(key, batch, once))

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        """Async :meth:`delete_messages`."""
        key = self._check_key(key)
        return await self._achange(lambda once: self._delete_all_op(key, once))

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Async :meth:`delete_message`."""
        key = self._check_key(key)
        return await self._achange(lambda once: self._delete_at_op(key, idx, once))

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        """Async :meth:`delete_last_message`."""
        key = self._check_key(key)
        return await self._achange(lambda once: self._pop_op(key, once))

    async def adelete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Async :meth:`delete_oldest_messages`."""
        key = self._check_key(key)
        return await self._achange(lambda once: self._oldest_op(key, n, once))

    async def aiter_keys(self) -> AsyncIterator[str]:
        """Async :meth:`iter_keys`."""
        start: Any = None
        while True:
            keys, start = await self._arun(functools.partial(self._keys_op, start))
            for key in keys:
                yield key
            if not start:
                return

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        await self._arun(self._clear_op)
