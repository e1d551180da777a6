"""AzureChatStore: chat history in Azure Table Storage or the Cosmos DB Table API."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, PrivateAttr, SecretStr

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient, TableServiceClient
from azure.data.tables.aio import TableClient as AsyncTableClient
from azure.data.tables.aio import TableServiceClient as AsyncTableServiceClient
from llama_index.storage.chat_store.azure._codec import (
    LLAMA_INDEX_RECORD,
    LLAMA_INDEX_RECORD_MAX,
    check_entity_size,
    encode_key,
    encode_llama_index_message,
    encode_payload,
    sanitize_table_name,
    validate_table_name,
)
from llama_index.storage.chat_store.azure._io import (
    NO_SDK_RETRIES,
    Plan,
    TableClients,
    _translate,
    run_async,
    run_sync,
)
from llama_index.storage.chat_store.azure._layout import Layout
from llama_index.storage.chat_store.azure._llama_index import LlamaIndexLayout
from llama_index.storage.chat_store.azure._native import NativeLayout
from llama_index.storage.chat_store.core import (
    BackendImportError,
    BaseChatStore,
    Capability,
    CapabilityNotSupportedError,
    ChatMessage,
    ConfigurationError,
    PerLoop,
    coerce_message,
    coerce_messages,
)
from llama_index.storage.chat_store.core.retries import RetryPolicy
from llama_index.storage.chat_store.core.store import check_flag, check_window
from llama_index.storage.chat_store.core.tools import read_tool_safe

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AzureChatStore", "ServiceMode"]

_T = TypeVar("_T")

DEFAULT_CHAT_TABLE = "ChatMessages"
DEFAULT_METADATA_TABLE = "ChatMetadata"


class ServiceMode(str, Enum):
    """Which service the tables live in (the wire protocol is the same)."""

    STORAGE = "storage"
    COSMOS = "cosmos"


class AzureChatStore(BaseChatStore):
    """Chat history in Azure Table Storage (or the Cosmos DB Table API), one entity per message.

    Build it with one of LlamaIndex's constructors (:meth:`from_account_and_key`,
    :meth:`from_connection_string`, :meth:`from_sas_token`, :meth:`from_aad_token`,
    :meth:`from_account_and_id`, or ``AzureChatStore(table_service_client,
    atable_service_client, chat_table_name, metadata_table_name, metadata_partition_key,
    service_mode)`` with ``azure-data-tables`` service clients) or :meth:`from_url`
    (``azuretable://ACCOUNT/TABLE``).
    Constructing never connects; the first operation creates the tables if they are
    missing (once per instance).

    ``layout="native"`` (default) keeps each conversation in its own partition with a
    meta entity, so appends, pops and replaces are atomic entity-group transactions,
    windows and counts never read the whole conversation, and ``get_keys`` reads a
    keys partition. ``layout="llama_index"`` reads and writes LlamaIndex's
    ``AzureChatStore`` tables (chat table + ``ChatMetadata``), sanitizing table names
    by LlamaIndex's rules.

    A request that fails for want of the service is sent again by the store (``retries``,
    ``retry_backoff``, ``retry_deadline``; azure-core's own retries are off on every
    request). Every change carries an operation id recorded with the change (in the native
    layout by the meta entity, in LlamaIndex's on the conversation's last chat row), so a
    change resent after a lost reply applies once and returns what it returned then
    (``Capability.EXACTLY_ONCE``); when the record cannot tell, it raises
    ``BackendUnavailableError`` (outcome unknown) rather than apply it twice.

    Raises (from any operation): ``BackendUnavailableError`` (service unreachable after the
    retries; its message says whether a change was applied, or that the outcome is unknown),
    ``AuthenticationError`` (credentials rejected), ``CorruptDataError`` (stored entity
    unreadable; names key and position), ``PayloadTooLargeError`` (a message beyond
    the 1 MiB entity limit; raised before anything is written).
    """

    chat_table_name: str = DEFAULT_CHAT_TABLE
    metadata_table_name: str = DEFAULT_METADATA_TABLE
    metadata_partition_key: str | None = None
    service_mode: ServiceMode = ServiceMode.STORAGE
    layout: Literal["native", "llama_index"] = "native"
    account_name: str | None = None
    endpoint: str | None = None
    retries: int = Field(default=3, ge=0)
    """Times a request that failed for want of the service is sent again (0: never)."""
    retry_backoff: float = Field(default=0.05, ge=0)
    """Seconds before the first retry, doubling for each next one (jittered)."""
    retry_deadline: float = Field(default=10.0, gt=0)
    """Seconds after a request's first failure past which no retry starts."""
    timeout: float = 30.0
    account_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    connection_string: SecretStr | None = Field(default=None, exclude=True, repr=False)
    sas_token: SecretStr | None = Field(default=None, exclude=True, repr=False)
    credential: Any = Field(default=None, exclude=True, repr=False)
    async_credential: Any = Field(default=None, exclude=True, repr=False)
    table_service_client: TableServiceClient | None = Field(default=None, exclude=True, repr=False)
    atable_service_client: AsyncTableServiceClient | None = Field(
        default=None, exclude=True, repr=False
    )

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _sync_clients: dict[str, TableClient] = PrivateAttr(default_factory=dict)
    _async_clients: PerLoop[TableClients] = PrivateAttr(
        default_factory=lambda: PerLoop(TableClients, aclose=TableClients.close)
    )
    _tables_ready: bool = PrivateAttr(default=False)
    _native: NativeLayout | None = PrivateAttr(default=None)
    _legacy: LlamaIndexLayout | None = PrivateAttr(default=None)

    def __init__(
        self,
        table_service_client: TableServiceClient | None = None,
        atable_service_client: AsyncTableServiceClient | None = None,
        chat_table_name: str | None = None,
        metadata_table_name: str | None = None,
        metadata_partition_key: str | None = None,
        service_mode: ServiceMode | str | None = None,
        **data: Any,
    ) -> None:
        """Configure the store; never connects. LlamaIndex's signature, positional order included.

        Args:
            table_service_client: An ``azure.data.tables.TableServiceClient``; the sync calls
                use table clients it hands out (its pipeline and credential), and it is never
                closed by the store.
            atable_service_client: An ``azure.data.tables.aio.TableServiceClient``; the async
                calls use its endpoint and credential, with a client per event loop (an aio
                client belongs to one loop). Without it, async calls run the sync path in a
                worker thread.
            chat_table_name: The messages table.
            metadata_table_name: LlamaIndex's metadata table (``layout="llama_index"``).
            metadata_partition_key: LlamaIndex's metadata partition (``layout="llama_index"``).
            service_mode: ``"storage"`` or ``"cosmos"``.
            **data: The other fields (``layout``, ``account_name``, ``account_key``, ...).

        Raises:
            TypeError: A service client of the wrong type.
            ValueError: An argument the store does not know (named in the message).
            ConfigurationError: No way to reach the service.
        """
        given = {
            "table_service_client": table_service_client,
            "atable_service_client": atable_service_client,
            "chat_table_name": chat_table_name, "metadata_table_name": metadata_table_name,
            "metadata_partition_key": metadata_partition_key, "service_mode": service_mode,
        }  # fmt: skip
        data.update({name: value for name, value in given.items() if value is not None})
        for name, value, kind in (
            ("table_service_client", table_service_client, TableServiceClient),
            ("atable_service_client", atable_service_client, AsyncTableServiceClient),
        ):
            if value is not None and not isinstance(value, kind):
                raise TypeError(
                    f"{name} must be an {kind.__module__}.{kind.__name__}, got "
                    f"{type(value).__qualname__}; see from_connection_string() and the other "
                    "class methods for secrets and URLs"
                )
        client = table_service_client or atable_service_client
        if client is not None:
            # The endpoint names the service in errors and dumps (never a secret).
            data.setdefault("endpoint", client.url)
            data.setdefault("account_name", client.account_name)
        super().__init__(**data)
        # Checked here, not in a validator, so callers get ConfigurationError itself
        # rather than pydantic's ValidationError wrapping it.
        self._configure()

    def _configure(self) -> None:
        if self.layout == "llama_index":
            self.chat_table_name = sanitize_table_name(self.chat_table_name)
            self.metadata_table_name = sanitize_table_name(self.metadata_table_name)
            if self.metadata_partition_key is None:
                self.metadata_partition_key = self.chat_table_name
            self._legacy = LlamaIndexLayout(
                self.chat_table_name,
                self.metadata_table_name,
                self.metadata_partition_key,
            )
        else:
            validate_table_name(self.chat_table_name, "chat_table_name")
            self._native = NativeLayout(self.chat_table_name)
        if self.connection_string is None and self.endpoint is None and self.account_name is None:
            raise ConfigurationError(
                "AzureChatStore needs a connection string, an endpoint or an account name"
            )
        if self.sas_token is not None and self.endpoint is None and self.account_name is None:
            raise ConfigurationError("a SAS token needs an endpoint or an account name")
        if self.atable_service_client is not None and self.table_service_client is None:
            raise ConfigurationError(
                "atable_service_client needs table_service_client too (as in LlamaIndex), "
                "for the sync calls"
            )

    @classmethod
    def class_name(cls) -> str:
        """Return ``"AzureChatStore"`` (LlamaIndex's name for its Azure store)."""
        return "AzureChatStore"

    @property
    def capabilities(self) -> frozenset[Capability]:
        """Persistent, shared, natively async; EXACTLY_ONCE when ``retries`` > 0.

        Azure Tables has no TTL.
        """
        found = {Capability.PERSISTENT, Capability.SHARED, Capability.NATIVE_ASYNC}
        if self.retries > 0:
            found.add(Capability.EXACTLY_ONCE)
        return frozenset(found)

    # -- constructors (LlamaIndex's names) ------------------------------------------------

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        chat_table_name: str = DEFAULT_CHAT_TABLE,
        metadata_table_name: str = DEFAULT_METADATA_TABLE,
        metadata_partition_key: str | None = None,
        service_mode: ServiceMode | str = ServiceMode.STORAGE,
        **options: Any,
    ) -> Self:
        """Build a store from a storage connection string."""
        return cls(
            connection_string=SecretStr(connection_string),
            chat_table_name=chat_table_name,
            metadata_table_name=metadata_table_name,
            metadata_partition_key=metadata_partition_key,
            service_mode=ServiceMode(service_mode),
            **options,
        )

    @classmethod
    def from_account_and_key(
        cls,
        account_name: str,
        account_key: str,
        endpoint: str | None = None,
        chat_table_name: str = DEFAULT_CHAT_TABLE,
        metadata_table_name: str = DEFAULT_METADATA_TABLE,
        metadata_partition_key: str | None = None,
        service_mode: ServiceMode | str = ServiceMode.STORAGE,
        **options: Any,
    ) -> Self:
        """Build a store from an account name and key (``endpoint`` defaults to Azure's)."""
        return cls(
            account_name=account_name,
            account_key=SecretStr(account_key),
            endpoint=endpoint,
            chat_table_name=chat_table_name,
            metadata_table_name=metadata_table_name,
            metadata_partition_key=metadata_partition_key,
            service_mode=ServiceMode(service_mode),
            **options,
        )

    @classmethod
    def from_sas_token(
        cls,
        endpoint: str,
        sas_token: str,
        chat_table_name: str = DEFAULT_CHAT_TABLE,
        metadata_table_name: str = DEFAULT_METADATA_TABLE,
        metadata_partition_key: str | None = None,
        service_mode: ServiceMode | str = ServiceMode.STORAGE,
        **options: Any,
    ) -> Self:
        """Build a store from a table endpoint and a SAS token."""
        return cls(
            endpoint=endpoint,
            sas_token=SecretStr(sas_token),
            chat_table_name=chat_table_name,
            metadata_table_name=metadata_table_name,
            metadata_partition_key=metadata_partition_key,
            service_mode=ServiceMode(service_mode),
            **options,
        )

    @classmethod
    def from_aad_token(
        cls,
        endpoint: str,
        chat_table_name: str = DEFAULT_CHAT_TABLE,
        metadata_table_name: str = DEFAULT_METADATA_TABLE,
        metadata_partition_key: str | None = None,
        service_mode: ServiceMode | str = ServiceMode.STORAGE,
        **options: Any,
    ) -> Self:
        """Build a store authenticated by Microsoft Entra ID (``DefaultAzureCredential``).

        Pass ``credential=`` / ``async_credential=`` to use other token credentials;
        otherwise ``azure-identity`` must be installed (the ``identity`` extra).
        """
        return cls(
            endpoint=endpoint,
            chat_table_name=chat_table_name,
            metadata_table_name=metadata_table_name,
            metadata_partition_key=metadata_partition_key,
            service_mode=ServiceMode(service_mode),
            **options,
        )

    @classmethod
    def from_account_and_id(
        cls,
        account_name: str,
        endpoint: str | None = None,
        chat_table_name: str = DEFAULT_CHAT_TABLE,
        metadata_table_name: str = DEFAULT_METADATA_TABLE,
        metadata_partition_key: str | None = None,
        service_mode: ServiceMode | str = ServiceMode.STORAGE,
        **options: Any,
    ) -> Self:
        """Build a store for an account authenticated by a managed identity (Entra ID)."""
        return cls(
            account_name=account_name,
            endpoint=endpoint,
            chat_table_name=chat_table_name,
            metadata_table_name=metadata_table_name,
            metadata_partition_key=metadata_partition_key,
            service_mode=ServiceMode(service_mode),
            **options,
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from ``azuretable://ACCOUNT/TABLE?...``.

        Query parameters: ``endpoint``, ``account_key``, ``connection_string``,
        ``sas_token``, ``metadata_table``, ``metadata_partition_key``, ``service_mode``,
        ``layout``, ``retries``, ``retry_backoff``, ``retry_deadline``. Without a secret
        in the URL or ``options``, the usual variables are read:
        ``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_KEY`` (or
        ``AZURE_STORAGE_ACCOUNT_KEY``), ``AZURE_STORAGE_SAS_TOKEN``; else Entra ID.
        """
        parts = urlsplit(url)
        if parts.scheme != "azuretable":
            raise ConfigurationError(f"not an azuretable:// URL: {parts.scheme}://...")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        table = unquote(parts.path.strip("/")) or DEFAULT_CHAT_TABLE
        config: dict[str, Any] = {"chat_table_name": table}
        account = unquote(parts.hostname or "") or os.environ.get("AZURE_STORAGE_ACCOUNT")
        if account:
            config["account_name"] = account
        renames = {"metadata_table": "metadata_table_name"}
        for name, value in query.items():
            config[renames.get(name, name)] = value
        config.update(options)
        secret_names = ("connection_string", "account_key", "sas_token", "credential")
        if not any(config.get(name) for name in secret_names):
            env = os.environ
            if env.get("AZURE_STORAGE_CONNECTION_STRING"):
                config["connection_string"] = env["AZURE_STORAGE_CONNECTION_STRING"]
            elif env.get("AZURE_STORAGE_KEY") or env.get("AZURE_STORAGE_ACCOUNT_KEY"):
                config["account_key"] = env.get("AZURE_STORAGE_KEY") or env.get(
                    "AZURE_STORAGE_ACCOUNT_KEY"
                )
            elif env.get("AZURE_STORAGE_SAS_TOKEN"):
                config["sas_token"] = env["AZURE_STORAGE_SAS_TOKEN"]
        for name, kind in (("retries", int), ("retry_backoff", float), ("retry_deadline", float)):
            if isinstance(config.get(name), str):
                config[name] = kind(config[name])
        return cls(**config)

    # -- clients ------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        """The service endpoint, for error messages (never a secret)."""
        if self.endpoint:
            return self.endpoint
        if self.connection_string is not None:
            fields = _parse_connection_string(self.connection_string.get_secret_value())
            if "TableEndpoint" in fields:
                return fields["TableEndpoint"]
            return f"https://{fields.get('AccountName', '?')}.table.core.windows.net"
        return self._default_endpoint()

    def _default_endpoint(self) -> str:
        if self.service_mode == ServiceMode.COSMOS:
            return f"https://{self.account_name}.table.cosmos.azure.com"
        return f"https://{self.account_name}.table.core.windows.net"

    def _client_options(self) -> dict[str, Any]:
        # The store retries (with an operation id check); the SDK must not resend on its own.
        return {**NO_SDK_RETRIES, "connection_timeout": self.timeout, "read_timeout": self.timeout}

    def _credential(self, *, asynchronous: bool) -> Any:
        if self.account_key is not None:
            name = self.account_name or _account_from_endpoint(self.endpoint or "")
            return AzureNamedKeyCredential(name, self.account_key.get_secret_value())
        if self.sas_token is not None:
            return AzureSasCredential(self.sas_token.get_secret_value())
        given = self.async_credential if asynchronous else self.credential
        if given is not None:
            return given
        try:
            if asynchronous:
                from azure.identity.aio import DefaultAzureCredential as AsyncDefault

                return AsyncDefault()
            from azure.identity import DefaultAzureCredential

            return DefaultAzureCredential()
        except ImportError as exc:
            raise BackendImportError(
                "Entra ID authentication needs azure-identity: pip install "
                "'llama-index-storage-chat-store-azure[identity]', or pass an account key, "
                "SAS token or connection string"
            ) from exc

    def _new_sync_client(self, table: str) -> TableClient:
        if self.table_service_client is not None:
            return self.table_service_client.get_table_client(table)
        options = self._client_options()
        if self.connection_string is not None:
            return TableClient.from_connection_string(
                self.connection_string.get_secret_value(), table_name=table, **options
            )
        endpoint = self.endpoint or self._default_endpoint()
        return TableClient(
            endpoint, table, credential=self._credential(asynchronous=False), **options
        )

    def _new_async_client(self, table: str) -> AsyncTableClient:
        options = self._client_options()
        service = self.atable_service_client
        if service is not None:
            # Not service.get_table_client: that shares the service client's HTTP session,
            # which belongs to the event loop it first ran on.
            return AsyncTableClient(service.url, table, credential=service.credential, **options)
        if self.connection_string is not None:
            return AsyncTableClient.from_connection_string(
                self.connection_string.get_secret_value(), table_name=table, **options
            )
        endpoint = self.endpoint or self._default_endpoint()
        return AsyncTableClient(
            endpoint, table, credential=self._credential(asynchronous=True), **options
        )

    def _sync_client(self, table: str) -> TableClient:
        client = self._sync_clients.get(table)
        if client is None:
            with self._lock:
                client = self._sync_clients.get(table)
                if client is None:
                    client = self._sync_clients[table] = self._new_sync_client(table)
        return client

    def _async_client(self, table: str) -> AsyncTableClient:
        return self._async_clients.get().client(table, self._new_async_client)

    def _tables(self) -> tuple[str, ...]:
        if self._legacy is not None:
            return (self.chat_table_name, self.metadata_table_name)
        return (self.chat_table_name,)

    def _ensure_tables(self, force: bool = False) -> None:
        if self._tables_ready and not force:
            return
        for table in self._tables():
            try:
                self._sync_client(table).create_table(**NO_SDK_RETRIES)
            except ResourceExistsError:
                pass
            except Exception as exc:
                raise _translate(exc, self._where) from exc
        self._tables_ready = True

    async def _aensure_tables(self, force: bool = False) -> None:
        if self._tables_ready and not force:
            return
        for table in self._tables():
            try:
                await self._async_client(table).create_table(**NO_SDK_RETRIES)
            except ResourceExistsError:
                pass
            except Exception as exc:
                raise _translate(exc, self._where) from exc
        self._tables_ready = True

    @property
    def _retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.retry_backoff, self.retry_deadline)

    def _run(self, plan: Plan[_T], *, mutates: bool = False) -> _T:
        return run_sync(
            plan, self._sync_client, self._where, self._ensure_tables, self._retry_policy,
            mutates=mutates,
        )  # fmt: skip

    async def _arun(self, plan: Plan[_T], *, mutates: bool = False) -> _T:
        if self.table_service_client is not None and self.atable_service_client is None:
            return await asyncio.to_thread(functools.partial(self._run, plan, mutates=mutates))
        return await run_async(
            plan, self._async_client, self._where, self._aensure_tables, self._retry_policy,
            mutates=mutates,
        )  # fmt: skip

    def close(self) -> None:
        """Close the sync clients; the store reopens them if used again."""
        with self._lock:
            clients, self._sync_clients = list(self._sync_clients.values()), {}
        for client in clients:
            client.close()

    async def aclose(self) -> None:
        """Close this event loop's async clients (and the sync ones)."""
        clients = self._async_clients.take()
        if clients is not None:
            await clients.close()
        self.close()

    # -- plans --------------------------------------------------------------------------

    @property
    def _layout(self) -> Layout:
        layout: Layout | None = self._native or self._legacy
        assert layout is not None
        return layout

    def _payloads(self, key: str, messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        """Encode messages for this layout, refusing any the service would reject."""
        cosmos = self.service_mode == ServiceMode.COSMOS
        pk = encode_key(key)
        payloads = []
        for message in messages:
            extra: dict[str, Any] = {}
            if self._legacy is not None:
                payload = encode_llama_index_message(message, cosmos=cosmos)
                extra[LLAMA_INDEX_RECORD] = "x" * LLAMA_INDEX_RECORD_MAX  # on the last row
            else:
                payload = encode_payload(message)
            # The longest RowKey either layout writes, so the check holds for every row.
            probe = {"PartitionKey": pk, "RowKey": "x" * 32, **payload, **extra}
            check_entity_size(probe, key=key, cosmos=cosmos)
            payloads.append(payload)
        return payloads

    def _get_plan(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        key = self._check_key(key)
        check_window(offset, limit)
        return self._layout.get_messages(key, offset, limit)

    def _add_plan(self, key: str, message: Any, idx: int | None) -> Plan[None]:
        key = self._check_key(key)
        payload = self._payloads(key, [coerce_message(message)])[0]
        if idx is None:
            return self._layout.append(key, [payload])
        return self._layout.insert_at(key, idx, payload)

    def _add_many_plan(self, key: str, messages: Sequence[Any]) -> Plan[None] | None:
        key = self._check_key(key)
        payloads = self._payloads(key, coerce_messages(messages))
        return self._layout.append(key, payloads) if payloads else None

    def _set_plan(self, key: str, messages: Sequence[Any]) -> Plan[None]:
        key = self._check_key(key)
        return self._layout.replace(key, self._payloads(key, coerce_messages(messages)))

    # -- sync API -----------------------------------------------------------------------

    def get_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Return ``messages[offset:][:limit]`` (``[]`` for a missing key).

        Reads the meta entity, then only the window's rows (native layout).
        """
        check_window(offset, limit, tool_safe)
        if tool_safe:
            return read_tool_safe(
                lambda o, n: self.get_messages(key, offset=o, limit=n), offset, limit
            )
        return self._run(self._get_plan(key, offset, limit))

    def count_messages(self, key: str) -> int:
        """Return the number of messages (one point read in the native layout)."""
        return self._run(self._layout.count_messages(self._check_key(key)))

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append atomically (one transaction), or insert at ``idx`` like ``list.insert``."""
        self._run(self._add_plan(key, message, idx), mutates=True)

    def add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Append atomically, in order; batches beyond one transaction go through a rewrite."""
        plan = self._add_many_plan(key, messages)
        if plan is not None:
            self._run(plan, mutates=True)

    def set_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Replace atomically for readers (a new generation, then one conditional flip)."""
        self._run(self._set_plan(key, messages), mutates=True)

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Remove the conversation; return its messages, or ``None`` if it had none."""
        return self._run(self._layout.delete_all(self._check_key(key)), mutates=True)

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove the message at ``idx``; ``None`` if out of range. Concurrent-safe."""
        return self._run(self._layout.delete_at(self._check_key(key), idx), mutates=True)

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Remove and return the last message (conditional write: never returned twice)."""
        return self._run(self._layout.pop_last(self._check_key(key)), mutates=True)

    def delete_oldest_messages(
        self, key: str, n: int, *, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Remove and return the first ``n`` messages."""
        if check_flag("tool_safe", tool_safe):
            raise CapabilityNotSupportedError(
                f"{type(self).__name__} does not trim tool-safely yet: its move onto the "
                "backend kit brings delete_oldest_messages(..., tool_safe=True)"
            )
        return self._run(self._layout.delete_oldest(self._check_key(key), n), mutates=True)

    def iter_keys(self) -> Iterator[str]:
        """Yield the keys holding messages, one page (1,000 keys) at a time."""
        token: Any = None
        while True:
            keys, token = self._run(self._layout.keys_page(token))
            yield from keys
            if token is None:
                return

    def clear(self) -> None:
        """Delete every entity of this store's table(s) (the tables stay)."""
        for plan_factory in self._layout.clear_plans():
            while self._run(plan_factory(), mutates=True):
                pass

    # -- async API ----------------------------------------------------------------------

    async def aget_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Async :meth:`get_messages`."""
        if tool_safe:
            return await super().aget_messages(key, offset=offset, limit=limit, tool_safe=True)
        return await self._arun(self._get_plan(key, offset, limit))

    async def acount_messages(self, key: str) -> int:
        """Async :meth:`count_messages`."""
        return await self._arun(self._layout.count_messages(self._check_key(key)))

    async def aadd_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Async :meth:`add_message`."""
        await self._arun(self._add_plan(key, message, idx), mutates=True)

    async def aadd_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`add_messages`."""
        plan = self._add_many_plan(key, messages)
        if plan is not None:
            await self._arun(plan, mutates=True)

    async def aset_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`set_messages`."""
        await self._arun(self._set_plan(key, messages), mutates=True)

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        """Async :meth:`delete_messages`."""
        return await self._arun(self._layout.delete_all(self._check_key(key)), mutates=True)

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Async :meth:`delete_message`."""
        return await self._arun(self._layout.delete_at(self._check_key(key), idx), mutates=True)

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        """Async :meth:`delete_last_message`."""
        return await self._arun(self._layout.pop_last(self._check_key(key)), mutates=True)

    async def adelete_oldest_messages(
        self, key: str, n: int, *, tool_safe: bool = False
    ) -> list[ChatMessage]:
        """Async :meth:`delete_oldest_messages`."""
        if check_flag("tool_safe", tool_safe):
            raise CapabilityNotSupportedError(
                f"{type(self).__name__} does not trim tool-safely yet: its move onto the "
                "backend kit brings delete_oldest_messages(..., tool_safe=True)"
            )
        return await self._arun(self._layout.delete_oldest(self._check_key(key), n), mutates=True)

    async def aiter_keys(self) -> AsyncIterator[str]:
        """Async :meth:`iter_keys`."""
        token: Any = None
        while True:
            keys, token = await self._arun(self._layout.keys_page(token))
            for key in keys:
                yield key
            if token is None:
                return

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        for plan_factory in self._layout.clear_plans():
            while await self._arun(plan_factory(), mutates=True):
                pass


def _parse_connection_string(text: str) -> dict[str, str]:
    fields = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def _account_from_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    path = parts.path.strip("/")
    if path:  # emulator style: http://127.0.0.1:10002/devstoreaccount1
        return path.split("/")[0]
    return (parts.hostname or "").split(".")[0]
