"""AzureChatStore: chat history in Azure Table Storage or the Cosmos DB Table API."""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, PrivateAttr, SecretStr

from azure.data.tables import TableServiceClient
from azure.data.tables.aio import TableServiceClient as AsyncTableServiceClient
from llama_index.storage.chat_store.azure._catalog import Gets, NativeCatalog, aread_all, read_all
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
from llama_index.storage.chat_store.azure._llama_index_writes import LlamaIndexLayout
from llama_index.storage.chat_store.azure._sdk import Clients, Request
from llama_index.storage.chat_store.core import (
    Capability,
    CapabilityNotSupportedError,
    ChatMessage,
    ConfigurationError,
)
from llama_index.storage.chat_store.core.backend import NOT_BOOL, Change, Plan, PlannedChatStore
from llama_index.storage.chat_store.core.catalog import ConversationInfo, ConversationPage

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AzureChatStore", "ServiceMode"]

DEFAULT_CHAT_TABLE = "ChatMessages"
DEFAULT_METADATA_TABLE = "ChatMetadata"


class ServiceMode(str, Enum):
    """Which service the tables live in (the wire protocol is the same)."""

    STORAGE = "storage"
    COSMOS = "cosmos"


class AzureChatStore(PlannedChatStore):
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
    keys partition. It keeps the conversation catalog (``Capability.CATALOG``) on each
    conversation's meta entity, listed in key order by an order partition (see the
    README). ``layout="llama_index"`` reads and writes LlamaIndex's
    ``AzureChatStore`` tables (chat table + ``ChatMetadata``), sanitizing table names
    by LlamaIndex's rules.

    A request that fails for want of the service is sent again on its own (``retries``,
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
    timeout: Annotated[float, NOT_BOOL] = 30.0
    account_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    connection_string: SecretStr | None = Field(default=None, exclude=True, repr=False)
    sas_token: SecretStr | None = Field(default=None, exclude=True, repr=False)
    credential: Any = Field(default=None, exclude=True, repr=False)
    async_credential: Any = Field(default=None, exclude=True, repr=False)
    table_service_client: TableServiceClient | None = Field(default=None, exclude=True, repr=False)
    atable_service_client: AsyncTableServiceClient | None = Field(
        default=None, exclude=True, repr=False
    )

    _clients: Clients = PrivateAttr()
    _tables_ready: bool = PrivateAttr(default=False)
    _native: NativeCatalog | None = PrivateAttr(default=None)
    _legacy: LlamaIndexLayout | None = PrivateAttr(default=None)
    # Every write is idempotent or conditional, so a request is resent on its own; a
    # conditional one that then conflicts checks the record (see _sdk's docstring). A
    # Batch with resend=False (an empty conversation's first rows in LlamaIndex's layout)
    # is never resent.
    _resend_steps: ClassVar[bool] = True

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
        self._clients = Clients(self)
        if self.layout == "llama_index":
            self.chat_table_name = sanitize_table_name(self.chat_table_name)
            self.metadata_table_name = sanitize_table_name(self.metadata_table_name)
            if self.metadata_partition_key is None:
                self.metadata_partition_key = self.chat_table_name
            self._legacy = LlamaIndexLayout(
                self.chat_table_name, self.metadata_table_name, self.metadata_partition_key
            )
        else:
            validate_table_name(self.chat_table_name, "chat_table_name")
            self._native = NativeCatalog(self.chat_table_name)
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
        """Persistent, shared, natively async; EXACTLY_ONCE when ``retries`` > 0; CATALOG natively.

        Azure Tables has no TTL. LlamaIndex's layout keeps no record per conversation to
        hold a catalog.
        """
        found = {Capability.PERSISTENT, Capability.SHARED, Capability.NATIVE_ASYNC}
        if self.retries > 0:
            found.add(Capability.EXACTLY_ONCE)
        if self._native is not None:
            found.add(Capability.CATALOG)
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
            **_tables(chat_table_name, metadata_table_name, metadata_partition_key, service_mode),
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
            **_tables(chat_table_name, metadata_table_name, metadata_partition_key, service_mode),
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
            **_tables(chat_table_name, metadata_table_name, metadata_partition_key, service_mode),
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
            **_tables(chat_table_name, metadata_table_name, metadata_partition_key, service_mode),
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
            **_tables(chat_table_name, metadata_table_name, metadata_partition_key, service_mode),
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
            key = env.get("AZURE_STORAGE_KEY") or env.get("AZURE_STORAGE_ACCOUNT_KEY")
            if env.get("AZURE_STORAGE_CONNECTION_STRING"):
                config["connection_string"] = env["AZURE_STORAGE_CONNECTION_STRING"]
            elif key:
                config["account_key"] = key
            elif env.get("AZURE_STORAGE_SAS_TOKEN"):
                config["sas_token"] = env["AZURE_STORAGE_SAS_TOKEN"]
        return cls(**config)  # numbers from the query are converted by the fields' types

    # -- the service ---------------------------------------------------------------------

    @property
    def _where(self) -> str:
        """The service endpoint, for error messages (never a secret)."""
        return self._clients.where

    def _execute(self, step: Request | Gets) -> Any:
        if isinstance(step, Gets):
            return read_all(step, self._clients.send)
        return self._clients.send(step)

    async def _aexecute(self, step: Request | Gets) -> Any:
        if isinstance(step, Gets):
            return await aread_all(step, self._clients.asend)
        return await self._clients.asend(step)

    def close(self) -> None:
        """Close the sync clients; the store reopens them if used again."""
        self._clients.close()

    async def aclose(self) -> None:
        """Close this event loop's async clients (and the sync ones)."""
        await self._clients.aclose()

    # -- plans, once for both drivers ---------------------------------------------------

    @property
    def _layout(self) -> NativeCatalog | LlamaIndexLayout:
        layout = self._native or self._legacy
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
        return self._layout.get_messages(key, offset, limit)

    def _count_plan(self, key: str) -> Plan[int]:
        return self._layout.count_messages(key)

    def _add_plan(
        self, key: str, messages: list[ChatMessage], idx: int | None, change: Change
    ) -> Plan[None]:
        payloads = self._payloads(key, messages)
        if idx is None:
            return self._layout.append(key, payloads, change)
        return self._layout.insert_at(key, idx, payloads[0], change)

    def _set_plan(self, key: str, messages: list[ChatMessage], change: Change) -> Plan[None]:
        return self._layout.replace(key, self._payloads(key, messages), change)

    def _delete_all_plan(self, key: str, change: Change) -> Plan[list[ChatMessage] | None]:
        return self._layout.delete_all(key, change)

    def _delete_at_plan(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        return self._layout.delete_at(key, idx, change)

    def _pop_plan(self, key: str, change: Change) -> Plan[ChatMessage | None]:
        return self._layout.pop_last(key, change)

    def _oldest_plan(
        self, key: str, n: int, change: Change, tool_safe: bool = False
    ) -> Plan[list[ChatMessage]]:
        return self._layout.delete_oldest(key, n, change, tool_safe)

    def _keys_plan(self, cursor: Any) -> Plan[tuple[list[str], Any]]:
        return self._layout.keys_page(cursor)

    def _clear_plan(self) -> Plan[None]:
        return self._layout.clear()

    def _catalog_plan(self, prefix: str, after: str | None, limit: int) -> Plan[ConversationPage]:
        return _catalog(self).list_page(prefix, after, limit)

    def _conversation_plan(self, key: str) -> Plan[ConversationInfo | None]:
        return _catalog(self).conversation(key)

    def _metadata_plan(
        self, key: str, changes: dict[str, str | None], change: Change
    ) -> Plan[ConversationInfo | None]:
        return _catalog(self).set_metadata(key, changes, change)


def _catalog(store: AzureChatStore) -> NativeCatalog:
    """The store's catalog, or the error saying that its layout keeps none."""
    if store._native is None:
        raise CapabilityNotSupportedError(
            "AzureChatStore keeps no conversation catalog (Capability.CATALOG) in "
            "layout='llama_index': LlamaIndex's tables hold no record per conversation "
            "(times, metadata) and no index in key order. Use layout='native' (chat-store "
            "copy moves the data), or list keys with iter_keys() and count with "
            "count_messages()"
        )
    return store._native


def _tables(
    chat: str, metadata: str, partition: str | None, mode: ServiceMode | str
) -> dict[str, Any]:
    """The arguments every constructor of LlamaIndex's shares."""
    return {"chat_table_name": chat, "metadata_table_name": metadata,
            "metadata_partition_key": partition, "service_mode": ServiceMode(mode)}  # fmt: skip
