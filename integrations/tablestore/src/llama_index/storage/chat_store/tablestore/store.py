"""TablestoreChatStore: chat histories in Alibaba Cloud Tablestore."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_serializer

from llama_index.storage.chat_store.core import (
    Capability,
    ChatMessage,
    ConfigurationError,
    PayloadTooLargeError,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import (
    Change,
    ConflictError,
    Lazy,
    PerLoop,
    Plan,
    PlannedChatStore,
    without_secrets,
)
from llama_index.storage.chat_store.core.store import window
from llama_index.storage.chat_store.core.tools import safe_trim_count
from llama_index.storage.chat_store.tablestore import _llama_index_layout as legacy
from llama_index.storage.chat_store.tablestore import _native as native
from llama_index.storage.chat_store.tablestore import _native_writes as writes
from llama_index.storage.chat_store.tablestore._catalog import CatalogPlans
from llama_index.storage.chat_store.tablestore._sdk import (
    CONDITION_FAILED,
    SDK_LOGGER,
    Call,
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

Layout = Literal["auto", "native", "llama_index"]
_RETRY_OPTIONS = {"retries", "retry_backoff", "retry_deadline"}
_URL_OPTIONS = {"access_key_id", "access_key_secret", "sts_token", "layout", "scheme",
                *_RETRY_OPTIONS}  # fmt: skip
"""A URL's query options, as text: the fields' types convert and check them."""
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


class TablestoreChatStore(CatalogPlans, PlannedChatStore):
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
        options = _client_options(kwargs)
        if tablestore_client is None:
            access_key_id = access_key_id or os.environ.get("TABLESTORE_ACCESS_KEY_ID")
            access_key_secret = access_key_secret or os.environ.get("TABLESTORE_ACCESS_KEY_SECRET")
            _check_connection(
                options, endpoint=endpoint, instance_name=instance_name,
                access_key_id=access_key_id, access_key_secret=access_key_secret,
            )  # fmt: skip
        super().__init__(
            tablestore_client=tablestore_client, endpoint=endpoint, instance_name=instance_name,
            access_key_id=access_key_id, access_key_secret=access_key_secret,
            table_name=table_name, client_options=options, **fields,
        )  # fmt: skip

    @field_serializer("client_options")
    def _without_secrets(self, value: dict[str, Any]) -> dict[str, Any]:
        return without_secrets(value)

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
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        table = unquote(parts.path.strip("/")) or DEFAULT_TABLE_NAME
        settings: dict[str, Any] = {
            "endpoint": f"{scheme}://{host}",
            "instance_name": unquote(parts.username),
            "table_name": table,
            **query,
            **options,
        }
        return cls(**settings)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """PERSISTENT, SHARED, NATIVE_ASYNC (``AsyncOTSClient``); EXACTLY_ONCE when retrying.

        CATALOG on our layout: ``layout="native"``, or ``"auto"`` once a call has found the
        table to be ours (LlamaIndex's layout keeps no catalog).
        """
        found = {Capability.PERSISTENT, Capability.SHARED, Capability.NATIVE_ASYNC}
        if "native" in (self.layout, self._resolved):
            found.add(Capability.CATALOG)
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

    def _execute(self, step: Call) -> Any:
        return self._send(self._sync_client(), step)

    def _send(self, client: Any, step: Call) -> Any:
        """Make one call on a sync client (the store's own, or a test's)."""
        with self._translated():
            return getattr(client, step.method)(*step.args, **step.kwargs)

    async def _aexecute(self, step: Call) -> Any:
        with self._translated():
            return await getattr(self._own_async.get(), step.method)(*step.args, **step.kwargs)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """Raise a failed condition as :class:`ConflictError`, anything else in our hierarchy."""
        try:
            yield
        except Exception as exc:
            if isinstance(exc, ts.OTSServiceError) and exc.get_error_code() == CONDITION_FAILED:
                raise ConflictError(str(exc)) from exc
            failure = translate(exc, self._where, self.table_name)
            if failure is None:
                raise
            raise failure from exc

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

    def _layout_plan(self) -> Plan[str]:
        if self._resolved is None:
            if self.layout != "auto":
                self._resolved = self.layout
            else:
                described = yield Call("describe_table", (self.table_name,))
                names = [column[0] for column in described.table_meta.schema_of_primary_key]
                self._resolved = "llama_index" if names == ["session_id"] else "native"
        return self._resolved

    def _create_plan(self) -> Plan[None]:
        existing = set((yield Call("list_table", ())))
        wanted: list[tuple[str, list[tuple[str, str]]]] = []
        if self.table_name in existing:
            layout = yield from self._layout_plan()
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
        self._read(self._create_plan)

    async def acreate_table_if_not_exist(self) -> None:
        """Async :meth:`create_table_if_not_exist`."""
        await self._aread(self._create_plan)

    # -- operations, once for both drivers --------------------------------------------------

    def _get_plan(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        if (yield from self._layout_plan()) == "native":
            return (yield from native.get(self._tables, key, offset, limit))
        messages = yield from legacy.read(self.table_name, key)
        return list(window(messages, offset, limit))

    def _count_plan(self, key: str) -> Plan[int]:
        if (yield from self._layout_plan()) == "native":
            return (yield from native.count(self._tables, key))
        return (yield from legacy.count(self.table_name, key))

    def _add_plan(
        self, key: str, messages: list[ChatMessage], idx: int | None, change: Change
    ) -> Plan[None]:
        jsons = _encode(messages)
        if (yield from self._layout_plan()) != "native":
            yield from legacy.add(self.table_name, key, jsons, idx, change)
        elif idx is None:
            yield from writes.add(self._tables, key, jsons, change)
        else:
            yield from writes.insert(self._tables, key, idx, jsons[0], change)

    def _set_plan(self, key: str, messages: list[ChatMessage], change: Change) -> Plan[None]:
        jsons = _encode(messages)
        if (yield from self._layout_plan()) == "native":
            yield from writes.set_all(self._tables, key, jsons, change)
        else:
            yield from legacy.replace(self.table_name, key, jsons, change)

    def _delete_all_plan(self, key: str, change: Change) -> Plan[list[ChatMessage] | None]:
        if (yield from self._layout_plan()) == "native":
            return (yield from writes.delete_all(self._tables, key, change))
        return (yield from legacy.remove(self.table_name, key, change))

    def _delete_at_plan(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        if (yield from self._layout_plan()) == "native":
            return (yield from writes.delete_at(self._tables, key, idx, change))

        def at(items: list[Any]) -> list[int]:
            size = len(items)
            return [idx % size] if -size <= idx < size else []

        taken = yield from legacy.take(self.table_name, key, at, change)
        return taken[0] if taken else None

    def _pop_plan(self, key: str, change: Change) -> Plan[ChatMessage | None]:
        if (yield from self._layout_plan()) == "native":
            return (yield from writes.pop_last(self._tables, key, change))
        return (yield from self._delete_at_plan(key, -1, change))

    def _oldest_plan(
        self, key: str, n: int, change: Change, tool_safe: bool
    ) -> Plan[list[ChatMessage]]:
        if n <= 0:
            return []
        if (yield from self._layout_plan()) == "native":
            return (yield from writes.delete_oldest(self._tables, key, n, change, tool_safe))

        def first(items: list[Any]) -> range:
            if tool_safe:
                return range(safe_trim_count(items, n, legacy.stored_result))
            return range(min(n, len(items)))

        return (yield from legacy.take(self.table_name, key, first, change))

    def _keys_plan(self, start: Any) -> Plan[tuple[list[str], Any]]:
        if (yield from self._layout_plan()) == "native":
            return (yield from native.keys_page(self._tables, start))
        return (yield from legacy.keys_page(self.table_name, start))

    def _clear_plan(self) -> Plan[None]:
        if (yield from self._layout_plan()) == "native":
            yield from writes.clear(self._tables)
        else:
            yield from legacy.clear(self.table_name)

    def clear_store(self) -> None:
        """Remove every conversation (LlamaIndex's name for :meth:`clear`)."""
        self.clear()


def _client_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``OTSClient`` options among a constructor's keyword arguments (fields removed).

    Raises:
        TypeError: A name that is neither a store field nor an ``OTSClient`` option.
    """
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
    return options


def _check_connection(options: dict[str, Any], **given: Any) -> None:
    """Raise ConfigurationError unless ``given`` is enough to build a client."""
    required = ["endpoint", "instance_name"]
    if "credentials_provider" not in options:
        required += ["access_key_id", "access_key_secret"]
    missing = [name for name in required if not given[name]]
    if missing:
        raise ConfigurationError(
            f"TablestoreChatStore needs {', '.join(missing)} (or tablestore_client=)"
        )
    if not str(given["endpoint"]).startswith(("http://", "https://")):
        raise ConfigurationError(
            f"endpoint must start with https:// or http://: {given['endpoint']}"
        )


def _encode(messages: Sequence[ChatMessage]) -> list[str]:
    """The messages' JSON, refusing any over Tablestore's limit for one value."""
    jsons = [message_to_json(m) for m in messages]
    for text in jsons:
        size = len(text.encode("utf-8"))
        if size > MAX_VALUE_BYTES:
            raise PayloadTooLargeError(
                f"a message of {size} bytes exceeds Tablestore's {MAX_VALUE_BYTES}-byte "
                "limit for one value; nothing was written"
            )
    return jsons
