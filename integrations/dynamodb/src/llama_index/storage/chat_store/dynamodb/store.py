"""DynamoDBChatStore: chat history in Amazon DynamoDB."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, field_serializer

from llama_index.storage.chat_store.core import (
    Capability,
    CapabilityNotSupportedError,
    ChatMessage,
    ConfigurationError,
    CorruptDataError,
    message_from_json,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import (
    NOT_BOOL,
    Change,
    Lazy,
    Plan,
    PlannedChatStore,
    messages_removed,
    without_secrets,
)
from llama_index.storage.chat_store.core.catalog import ConversationInfo, ConversationPage
from llama_index.storage.chat_store.dynamodb._llama_index_layout import (
    LlamaIndexLayout,
    llama_index_table_definition,
)
from llama_index.storage.chat_store.dynamodb._native import NativeLayout
from llama_index.storage.chat_store.dynamodb._native_catalog import add_catalog_index
from llama_index.storage.chat_store.dynamodb._native_meta import (
    CATALOG_INDEX,
    KEYS_INDEX,
    native_table_definition,
)
from llama_index.storage.chat_store.dynamodb._sdk import Call, Table, Translator

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DynamoDBChatStore"]

T = TypeVar("T")

Layout = Literal["auto", "native", "llama_index"]
_URL_OPTIONS = {
    "region": "region_name", "region_name": "region_name", "endpoint_url": "endpoint_url",
    "profile": "profile_name", "profile_name": "profile_name", "primary_key": "primary_key",
    "sort_key": "sort_key", "ttl": "ttl", "ttl_seconds": "ttl", "ttl_attribute": "ttl_attribute",
    "refresh_on_read": "refresh_on_read", "layout": "layout", "max_retries": "max_retries",
    "timeout": "timeout", "retries": "retries", "retry_backoff": "retry_backoff",
    "retry_deadline": "retry_deadline",
    "aws_access_key_id": "aws_access_key_id", "aws_secret_access_key": "aws_secret_access_key",
    "aws_session_token": "aws_session_token",
}  # fmt: skip


_SESSIONS: dict[tuple[tuple[str, Any], ...], boto3.Session] = {}
_SESSIONS_LOCK = threading.Lock()


def _new_client(session_options: dict[str, Any], client_options: dict[str, Any]) -> Any:
    """Return a new DynamoDB client on a boto3 session shared by stores configured alike.

    Building a session parses botocore's service models again (~0.1 s of CPU); stores
    created per request would pay that every time. Only sessions are shared (and used under
    a lock, since sessions are not thread-safe); each store has its own client, and clients
    are thread-safe.
    """
    cache_key = tuple(sorted(session_options.items()))
    with _SESSIONS_LOCK:
        try:
            session = _SESSIONS.get(cache_key)
        except TypeError:  # an unhashable session option: no sharing
            session, cache_key = None, ()
        if session is None:
            session = boto3.Session(**session_options)
            if cache_key:
                _SESSIONS[cache_key] = session
        return session.client("dynamodb", **client_options)


class DynamoDBChatStore(PlannedChatStore):
    """Conversations in a DynamoDB table, one item per message (or LlamaIndex's one per chat).

    On the recommended table (:meth:`create_table`: partition key ``SessionId``, numeric sort
    key, a sparse index for ``get_keys``) each message is its own item and each conversation
    has a meta item: appends are single conditional transactions (exact under concurrency,
    no ceiling on a conversation's length), replaces of any length are atomic for readers,
    and windows read only the items asked for. On LlamaIndex's hash-key-only table
    (``layout="auto"`` detects it) conversations are LlamaIndex's single items, readable and
    writable by LlamaIndex's ``DynamoDBChatStore``, with conditional writes added so
    concurrent appends are not lost.

    On the recommended table a message over DynamoDB's 400 KB item limit is split across
    several items and still reads, counts and moves as one message; a message over
    16 MB of JSON (or, in LlamaIndex's layout, a conversation over one 400 KB item) raises
    :class:`PayloadTooLargeError` before anything is written. With ``ttl`` (alias
    ``ttl_seconds``) every change sets the conversation's expiry to now + ttl, and with
    ``refresh_on_read`` so does every read of a live conversation (both layouts); expired
    conversations are absent from reads at once, while DynamoDB deletes their items later.

    A call that fails on the way (a dropped connection, a timeout, throttling that outlasts
    botocore's own retries) is retried by the store, up to ``retries`` more times with
    exponential backoff and jitter (from ``retry_backoff`` seconds, doubling) within
    ``retry_deadline`` seconds. Every change carries an operation id, made once per call and
    written in the same conditional write that commits it (the meta item keeps the ids of
    its conversation's last 16 changes; LlamaIndex's item the same, in ``ChatStoreOps``), so
    a retry of a change whose reply was lost, by the store or by botocore, applies nothing
    twice and returns what the first attempt returned (a removal returns the messages it
    removed). When the retries run out the call raises :class:`BackendUnavailableError`,
    saying "nothing was applied" when no attempt reached DynamoDB, otherwise "the outcome
    is unknown" (it was applied once or not at all).

    Constructing a store does not connect; the first operation does. Errors: a missing table
    raises :class:`ConfigurationError` naming it; an unreachable endpoint, or throttling that
    outlasts ``max_retries``, :class:`BackendUnavailableError`; rejected credentials
    :class:`AuthenticationError`; unreadable items :class:`CorruptDataError`.

    Args:
        table_name: The DynamoDB table.
        primary_key: The table's partition key attribute.
        profile_name: AWS profile (credentials also come from the usual AWS chain).
        region_name: AWS region.
        aws_access_key_id: Access key id.
        aws_secret_access_key: Secret access key (never dumped or shown).
        aws_session_token: Session token (never dumped or shown).
        botocore_session: A botocore session to build the boto3 session on.
        botocore_config: A botocore ``Config``; replaces the one built from ``max_retries``
            and ``timeout``.
        max_retries: Attempts botocore makes of each request, throttled or failed (its
            standard mode).
        timeout: Connect and read timeout in seconds.
        session_kwargs: More ``boto3.Session`` arguments.
        resource_kwargs: More client arguments (``endpoint_url``, ``verify``, ...).
        ttl: Seconds a conversation lives after its last change (alias ``ttl_seconds``).
        refresh_on_read: Reads of a live conversation (``get_messages``,
            ``count_messages``) also push its expiry to now + ttl. No effect without ``ttl``.
        ttl_attribute: The attribute DynamoDB's TTL feature is enabled on.
        endpoint_url: Another endpoint (DynamoDB Local, moto, a VPC endpoint).
        layout: ``"auto"`` (from the table's key schema), ``"native"`` or ``"llama_index"``.
        sort_key: The sort key attribute :meth:`create_table` uses for the recommended table.
        retries: Times the store tries a failed call again, on top of botocore's attempts
            (0: never, and no EXACTLY_ONCE).
        retry_backoff: Seconds before the store's first retry, doubling (jittered).
        retry_deadline: Seconds after which a failing call stops retrying.
    """

    max_key_bytes: ClassVar[int] = 2048
    """DynamoDB's limit on a partition key value."""

    table_name: str
    primary_key: str = "SessionId"
    profile_name: str | None = None
    region_name: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = Field(default=None, exclude=True)
    aws_session_token: SecretStr | None = Field(default=None, exclude=True)
    botocore_session: Any = Field(default=None, exclude=True, repr=False)
    botocore_config: Any = Field(default=None, exclude=True, repr=False)
    max_retries: Annotated[int, NOT_BOOL] = 10
    timeout: Annotated[float, NOT_BOOL] = 60.0
    session_kwargs: dict[str, Any] = Field(default_factory=dict, repr=False)
    resource_kwargs: dict[str, Any] = Field(default_factory=dict, repr=False)
    ttl: Annotated[int | None, NOT_BOOL] = Field(
        default=None, validation_alias=AliasChoices("ttl", "ttl_seconds")
    )
    refresh_on_read: bool = False
    ttl_attribute: str = "TTL"
    endpoint_url: str | None = None
    layout: Layout = "auto"
    sort_key: str = "Seq"

    _client: Lazy[Any] = PrivateAttr()
    _errors: Translator = PrivateAttr()
    _layout: NativeLayout | LlamaIndexLayout | None = PrivateAttr(default=None)

    def __init__(
        self,
        table_name: str | None = None,
        primary_key: str | None = None,
        profile_name: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | SecretStr | None = None,
        aws_session_token: str | SecretStr | None = None,
        botocore_session: Any = None,
        botocore_config: Any = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        session_kwargs: dict[str, Any] | None = None,
        resource_kwargs: dict[str, Any] | None = None,
        ttl_seconds: int | None = None,
        ttl_attribute: str | None = None,
        **data: Any,
    ) -> None:
        """Configure the store; never connects. LlamaIndex's signature, positional order included.

        Arguments are described on the class; ``**data`` takes the fields LlamaIndex's
        store does not have (``ttl``, ``endpoint_url``, ``layout``, ...).

        Raises:
            TypeError: An argument given both by position and by keyword.
            ValueError: An argument the store does not know (named in the message).
        """
        given = {
            "table_name": table_name, "primary_key": primary_key, "profile_name": profile_name,
            "region_name": region_name, "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token, "botocore_session": botocore_session,
            "botocore_config": botocore_config, "max_retries": max_retries, "timeout": timeout,
            "session_kwargs": session_kwargs, "resource_kwargs": resource_kwargs,
            "ttl_seconds": ttl_seconds, "ttl_attribute": ttl_attribute,
        }  # fmt: skip
        data.update({name: value for name, value in given.items() if value is not None})
        super().__init__(**data)

    def model_post_init(self, context: Any, /) -> None:
        """Check the options that cannot work before any connection is made."""
        if self.ttl is not None and self.ttl <= 0:
            raise ConfigurationError(f"ttl must be a positive number of seconds, got {self.ttl}")
        self._client = Lazy(self._new_client)
        self._errors = Translator(self.table_name, self._endpoint())

    @field_serializer("session_kwargs", "resource_kwargs")
    def _without_secrets(self, value: dict[str, Any]) -> dict[str, Any]:
        return without_secrets(value)

    @classmethod
    def class_name(cls) -> str:
        """Return ``"DynamoDBChatStore"`` (LlamaIndex's name for its DynamoDB store)."""
        return "DynamoDBChatStore"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from ``dynamodb://TABLE?region=...&endpoint_url=...``.

        Query parameters: ``region``, ``endpoint_url``, ``profile``, ``primary_key``,
        ``sort_key``, ``ttl``, ``ttl_attribute``, ``refresh_on_read`` (``true``/``false``),
        ``layout``, ``max_retries``, ``timeout``, ``retries``, ``retry_backoff``,
        ``retry_deadline`` and the ``aws_*`` credentials (else the
        usual AWS environment variables and files). Keyword ``options`` override the URL.

        Raises:
            ConfigurationError: Not a ``dynamodb://`` URL, no table, or an unknown parameter.
        """
        parts = urlsplit(url)
        if parts.scheme != "dynamodb" or not parts.netloc:
            raise ConfigurationError(f"expected dynamodb://TABLE?..., got {parts.scheme}:// URL")
        config: dict[str, Any] = {"table_name": unquote(parts.netloc)}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in _URL_OPTIONS:
                raise ConfigurationError(
                    f"unknown dynamodb:// URL parameter {name!r}; known: {sorted(_URL_OPTIONS)}"
                )
            config[_URL_OPTIONS[name]] = value
        return cls(**{**config, **options})

    @property
    def ttl_seconds(self) -> int | None:
        """LlamaIndex's name for :attr:`ttl`."""
        return self.ttl

    @property
    def capabilities(self) -> frozenset[Capability]:
        """PERSISTENT and SHARED; TTL when ``ttl`` is set; EXACTLY_ONCE when ``retries`` > 0.

        CATALOG on the recommended layout (LlamaIndex's keeps no record to list). With
        ``layout="auto"`` that takes the table's description: the first call asks DynamoDB
        (DescribeTable, as the first operation would). Async runs in worker threads.
        """
        found = {Capability.PERSISTENT, Capability.SHARED}
        native = self.layout == "native" or (
            self.layout == "auto" and isinstance(self._read(self._storage), NativeLayout)
        )
        if native:
            found.add(Capability.CATALOG)
        if self.ttl is not None:
            found.add(Capability.TTL)
        if self.retries > 0:
            found.add(Capability.EXACTLY_ONCE)
        return frozenset(found)

    # -- connection ------------------------------------------------------------------------

    def _endpoint(self) -> str:
        explicit = self.endpoint_url or self.resource_kwargs.get("endpoint_url")
        return str(
            explicit or f"the AWS DynamoDB endpoint of {self.region_name or 'the default region'}"
        )

    def _new_client(self) -> Any:
        secret, token = self.aws_secret_access_key, self.aws_session_token
        session_options = {
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": secret.get_secret_value() if secret else None,
            "aws_session_token": token.get_secret_value() if token else None,
            "region_name": self.region_name,
            "botocore_session": self.botocore_session,
            "profile_name": self.profile_name,
            **self.session_kwargs,
        }
        config = self.botocore_config or Config(
            retries={"max_attempts": self.max_retries, "mode": "standard"},
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
        )
        options = {"config": config, **self.resource_kwargs}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        return _new_client(session_options, options)

    def _execute(self, step: Call) -> Any:
        return self._errors.send(self._client.get, step)

    async def _adrive(self, plan: Plan[T]) -> T:
        # boto3 has no async driver: an attempt runs in one worker thread, all its requests.
        return await asyncio.to_thread(self._drive, plan)

    def _table(self) -> Table:
        return Table(
            name=self.table_name,
            pk=self.primary_key,
            ttl=self.ttl,
            ttl_attribute=self.ttl_attribute,
            endpoint=self._endpoint(),
            refresh_on_read=self.refresh_on_read,
        )

    def _storage(self) -> Plan[NativeLayout | LlamaIndexLayout]:
        """Return the layout for the table, detecting it on first use (DescribeTable)."""
        if self._layout is None:
            reply = yield Call(
                "describe_table", {"TableName": self.table_name}, "describe the table"
            )
            self._layout = self._layout_for(reply["Table"])
        return self._layout

    def _layout_for(self, described: dict[str, Any]) -> NativeLayout | LlamaIndexLayout:
        """Return the layout a table described by DescribeTable holds.

        Raises:
            ConfigurationError: The table does not fit ``primary_key`` or ``layout``.
        """
        keys = {k["KeyType"]: k["AttributeName"] for k in described["KeySchema"]}
        if keys.get("HASH") != self.primary_key:
            raise ConfigurationError(
                f"DynamoDB table {self.table_name!r} has partition key {keys.get('HASH')!r}, "
                f"but primary_key is {self.primary_key!r}"
            )
        range_key = keys.get("RANGE")
        wanted = (
            self.layout if self.layout != "auto" else ("native" if range_key else "llama_index")
        )
        if wanted == "llama_index":
            if range_key is not None:
                raise ConfigurationError(
                    f"DynamoDB table {self.table_name!r} has a sort key ({range_key!r}); "
                    "LlamaIndex's layout needs LlamaIndex's hash-key-only table"
                )
            return LlamaIndexLayout(self._table())
        if range_key is None:
            raise ConfigurationError(
                f"DynamoDB table {self.table_name!r} has no sort key, so it cannot hold the "
                "native layout; use layout='llama_index' or create the recommended table"
            )
        indexes = {i.get("IndexName"): i for i in described.get("GlobalSecondaryIndexes") or []}
        catalog = indexes.get(CATALOG_INDEX, {}).get("IndexStatus") == "ACTIVE"
        return NativeLayout(
            self._table(), range_key, keys_index=KEYS_INDEX in indexes, catalog_index=catalog
        )

    def create_table(self, *, layout: Literal["native", "llama_index"] = "native") -> None:
        """Create the table if it does not exist, and enable DynamoDB's TTL on ``ttl_attribute``.

        ``layout="native"`` (default) creates the recommended table: partition key
        ``primary_key`` (S), sort key ``sort_key`` (N), the sparse indexes ``get_keys`` and
        ``list_conversations`` read, on-demand billing. ``layout="llama_index"`` creates
        LlamaIndex's hash-key-only table. An existing table is left as it is, except that a
        recommended table created by an earlier version gains the catalog index: this waits
        until DynamoDB has built it, then lists the conversations already there in it
        (idempotent, safe beside running stores; conversations that stores of earlier
        versions begin afterwards are listed on their next change by this version).
        """
        if layout == "native":
            definition = native_table_definition(
                self.table_name, self.primary_key, self.sort_key, self.ttl_attribute
            )
        else:
            definition = llama_index_table_definition(self.table_name, self.primary_key)
        client = self._client.get()
        with self._errors.errors("create the table"):
            try:
                client.create_table(**definition)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                    raise
            client.get_waiter("table_exists").wait(
                TableName=self.table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
            )
            try:
                client.update_time_to_live(
                    TableName=self.table_name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": self.ttl_attribute},
                )
            except ClientError as exc:  # already enabled: fine
                if exc.response.get("Error", {}).get("Code") != "ValidationException":
                    raise
            described = client.describe_table(TableName=self.table_name)["Table"]
        self._layout = None
        with self._errors.errors("add the catalog index"):
            added = layout == "native" and add_catalog_index(client, self.table_name, described)
        if added:
            native = self._read(self._storage)
            assert isinstance(native, NativeLayout)
            self._read(native.backfill)

    def close(self) -> None:
        """Close the boto3 client; the store makes a new one if used again."""
        client = self._client.take()
        if client is not None:
            client.close()

    # -- what was stored -------------------------------------------------------------------

    def _parse_removed(
        self, key: str, pairs: Sequence[tuple[int, str | CorruptDataError]]
    ) -> list[ChatMessage]:
        """Parse what a removal removed.

        Raises:
            CorruptDataError: Something removed was not a message: it is gone all the same
                (corrupt data must stay deletable); names the first such position, says it
                was removed and holds what was stored there.
            SerializationError: The same, for a message LlamaIndex's model cannot hold.
        """
        return messages_removed(key, pairs, storage=f"DynamoDB table {self.table_name!r}")

    # -- operations, once for both drivers ---------------------------------------------------

    def _get_plan(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        # Native: the meta item, then only the requested items (and the chunks of split
        # messages); with refresh_on_read a live conversation's expiry moves to now + ttl.
        layout = yield from self._storage()
        pairs = yield from layout.get(key, offset, limit)
        return [message_from_json(data, key=key, position=p) for p, data in pairs]

    def _count_plan(self, key: str) -> Plan[int]:
        layout = yield from self._storage()
        return (yield from layout.count(key))

    def _add_plan(
        self, key: str, messages: list[ChatMessage], idx: int | None, change: Change
    ) -> Plan[None]:
        # No copy of the messages: the JSON is the private copy (a copy first would only
        # cost time, and recurse through deep values the serializer refuses).
        data = [message_to_json(m) for m in messages]
        layout = yield from self._storage()
        if idx is None:
            yield from layout.append(key, data, change)
        else:
            yield from layout.insert(key, idx, data[0], change)

    def _set_plan(self, key: str, messages: list[ChatMessage], change: Change) -> Plan[None]:
        data = [message_to_json(m) for m in messages]
        layout = yield from self._storage()
        yield from layout.replace(key, data, change)

    def _delete_all_plan(self, key: str, change: Change) -> Plan[list[ChatMessage] | None]:
        layout = yield from self._storage()
        removed = yield from layout.delete_all(key, change)  # [] (no messages): None to the caller
        return self._parse_removed(key, list(enumerate(removed)))

    def _delete_at_plan(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        layout = yield from self._storage()
        removed = yield from layout.delete_at(key, idx, change)
        return None if removed is None else self._parse_removed(key, [removed])[0]

    def _oldest_plan(
        self, key: str, n: int, change: Change, tool_safe: bool
    ) -> Plan[list[ChatMessage]]:
        layout = yield from self._storage()
        removed = yield from layout.delete_oldest(key, n, change, tool_safe)
        return self._parse_removed(key, list(enumerate(removed)))

    def _keys_plan(self, cursor: Any) -> Plan[tuple[Sequence[str], Any]]:
        # Native: a scan of the sparse keys index (meta items only, never messages).
        # LlamaIndex's layout: a scan of the table projected to the key.
        layout = yield from self._storage()
        return (yield from layout.keys_page(cursor))

    def _clear_plan(self) -> Plan[None]:
        layout = yield from self._storage()
        yield from layout.clear()

    # -- the conversation catalog (recommended layout) ---------------------------------------

    def _catalog_plan(self, prefix: str, after: str | None, limit: int) -> Plan[ConversationPage]:
        # The catalog index from the cursor (O(page)), then the page's meta items by key.
        layout = _catalog_of((yield from self._storage()), self.table_name)
        if not layout.catalog_index:  # added since the table was described?
            self._layout = None
            layout = _catalog_of((yield from self._storage()), self.table_name)
        return (yield from layout.catalog_page(prefix, after, limit))

    def _conversation_plan(self, key: str) -> Plan[ConversationInfo | None]:
        layout = _catalog_of((yield from self._storage()), self.table_name)
        return (yield from layout.info(key))

    def _metadata_plan(
        self, key: str, changes: dict[str, str | None], change: Change
    ) -> Plan[ConversationInfo | None]:
        layout = _catalog_of((yield from self._storage()), self.table_name)
        return (yield from layout.set_metadata(key, changes, change))


def _catalog_of(layout: NativeLayout | LlamaIndexLayout, table: str) -> NativeLayout:
    """Return ``layout`` if it keeps the catalog (the recommended one).

    Raises:
        CapabilityNotSupportedError: It is LlamaIndex's layout.
    """
    if isinstance(layout, NativeLayout):
        return layout
    raise CapabilityNotSupportedError(
        f"DynamoDBChatStore on LlamaIndex's layout (table {table!r}) keeps no conversation "
        "catalog (Capability.CATALOG): its one item per conversation holds no times or "
        "metadata, and listing it in key order would scan the table. Use the recommended "
        "table (create_table()), or list keys with iter_keys() and count with count_messages()"
    )
