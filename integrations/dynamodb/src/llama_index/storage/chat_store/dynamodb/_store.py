"""DynamoDBChatStore: chat history in Amazon DynamoDB."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, field_serializer

from llama_index.storage.chat_store.core import (
    BaseChatStore,
    Capability,
    ChatMessage,
    ConfigurationError,
    CorruptDataError,
    coerce_message,
    coerce_messages,
    message_from_json,
    message_to_json,
    messages_removed,
)
from llama_index.storage.chat_store.core.retries import RetryPolicy
from llama_index.storage.chat_store.core.store import check_window
from llama_index.storage.chat_store.dynamodb._client import Table, Translator, Unreadable
from llama_index.storage.chat_store.dynamodb._llama_index import (
    LlamaIndexLayout,
    llama_index_table_definition,
)
from llama_index.storage.chat_store.dynamodb._native import (
    KEYS_INDEX,
    NativeLayout,
    native_table_definition,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DynamoDBChatStore"]

Layout = Literal["auto", "native", "llama_index"]
_SECRET_WORDS = ("secret", "token", "password")
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


class DynamoDBChatStore(BaseChatStore):
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
    max_retries: int = 10
    timeout: float = 60.0
    session_kwargs: dict[str, Any] = Field(default_factory=dict, repr=False)
    resource_kwargs: dict[str, Any] = Field(default_factory=dict, repr=False)
    ttl: int | None = Field(default=None, validation_alias=AliasChoices("ttl", "ttl_seconds"))
    refresh_on_read: bool = False
    ttl_attribute: str = "TTL"
    endpoint_url: str | None = None
    layout: Layout = "auto"
    sort_key: str = "Seq"
    retries: int = Field(default=3, ge=0)
    retry_backoff: float = Field(default=0.05, ge=0)
    retry_deadline: float = Field(default=10.0, gt=0)

    _client: Any = PrivateAttr(default=None)
    _layout: NativeLayout | LlamaIndexLayout | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

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

    @field_serializer("session_kwargs", "resource_kwargs")
    def _without_secrets(self, value: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in value.items() if not any(w in k.lower() for w in _SECRET_WORDS)}

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

        Async runs in worker threads.
        """
        found = {Capability.PERSISTENT, Capability.SHARED}
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

    def _boto_client(self) -> Any:
        with self._lock:
            if self._client is None:
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
                self._client = _new_client(session_options, options)
            return self._client

    def _table(self) -> Table:
        return Table(
            client=self._boto_client,
            name=self.table_name,
            pk=self.primary_key,
            ttl=self.ttl,
            ttl_attribute=self.ttl_attribute,
            errors=Translator(self.table_name, self._endpoint()),
            refresh_on_read=self.refresh_on_read,
            policy=RetryPolicy(self.retries, self.retry_backoff, self.retry_deadline),
        )

    def _storage(self) -> NativeLayout | LlamaIndexLayout:
        """Return the layout for the table, detecting it on first use (DescribeTable)."""
        layout = self._layout
        if layout is not None:
            return layout
        table = self._table()

        def describe() -> dict[str, Any]:
            with table.errors.errors("describe the table"):
                found: dict[str, Any] = self._boto_client().describe_table(
                    TableName=self.table_name
                )["Table"]
                return found

        described = table.retried(describe, mutates=False)
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
        if wanted == "native":
            if range_key is None:
                raise ConfigurationError(
                    f"DynamoDB table {self.table_name!r} has no sort key, so it cannot hold the "
                    "native layout; use layout='llama_index' or create the recommended table"
                )
            indexes = described.get("GlobalSecondaryIndexes") or []
            has_index = any(i.get("IndexName") == KEYS_INDEX for i in indexes)
            layout = NativeLayout(table, range_key, keys_index=has_index)
        else:
            if range_key is not None:
                raise ConfigurationError(
                    f"DynamoDB table {self.table_name!r} has a sort key ({range_key!r}); "
                    "LlamaIndex's layout needs LlamaIndex's hash-key-only table"
                )
            layout = LlamaIndexLayout(table)
        self._layout = layout
        return layout

    def create_table(self, *, layout: Literal["native", "llama_index"] = "native") -> None:
        """Create the table if it does not exist, and enable DynamoDB's TTL on ``ttl_attribute``.

        ``layout="native"`` (default) creates the recommended table: partition key
        ``primary_key`` (S), sort key ``sort_key`` (N), the sparse index ``get_keys`` reads,
        on-demand billing. ``layout="llama_index"`` creates LlamaIndex's hash-key-only table.
        An existing table is left as it is.
        """
        table = self._table()
        if layout == "native":
            definition = native_table_definition(
                self.table_name, self.primary_key, self.sort_key, self.ttl_attribute
            )
        else:
            definition = llama_index_table_definition(self.table_name, self.primary_key)
        client = self._boto_client()
        with table.errors.errors("create the table"):
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
        self._layout = None

    # -- reads -----------------------------------------------------------------------------

    def _parse(self, key: str, pairs: Sequence[tuple[int, str]]) -> list[ChatMessage]:
        return [message_from_json(data, key=key, position=p) for p, data in pairs]

    def _parse_removed(
        self, key: str, pairs: Sequence[tuple[int, str | Unreadable]]
    ) -> list[ChatMessage]:
        """Parse what a removal removed.

        Raises:
            CorruptDataError: Something removed was not a message: it is gone all the same
                (corrupt data must stay deletable); names the first such position, says it
                was removed and holds what was stored there.
            SerializationError: The same, for a message LlamaIndex's model cannot hold.
        """
        stored: list[tuple[int, str | bytes | CorruptDataError]] = [
            (position, self._unreadable(key, position, data))
            if isinstance(data, Unreadable) else (position, data)
            for position, data in pairs
        ]  # fmt: skip
        return messages_removed(key, stored, storage=f"DynamoDB table {self.table_name!r}")

    def _unreadable(self, key: str, position: int, data: Unreadable) -> CorruptDataError:
        return CorruptDataError(
            f"message at key {key!r} position {position} in DynamoDB table "
            f"{self.table_name!r} is unreadable: {data.why}",
            key=key,
            position=position,
            data=data.data,
        )

    def get_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ChatMessage]:
        """Return ``messages[offset:][:limit]`` (``[]`` for a missing or expired key).

        Reads the meta item, then queries only the requested items (and the extra items of
        messages split across several). With ``refresh_on_read`` a live conversation's
        expiry moves to now + ttl.
        """
        key = self._check_key(key)
        check_window(offset, limit)
        storage = self._storage()
        return self._parse(
            key, storage.t.retried(lambda: storage.get(key, offset, limit), mutates=False)
        )

    def count_messages(self, key: str) -> int:
        """Return the number of messages (one small read of the meta item).

        With ``refresh_on_read`` a live conversation's expiry moves to now + ttl.
        """
        key = self._check_key(key)
        storage = self._storage()
        return storage.t.retried(lambda: storage.count(key), mutates=False)

    def iter_keys(self) -> Iterator[str]:
        """Yield the keys holding unexpired messages, page by page.

        Native layout: a scan of the sparse keys index (meta items only, never messages).
        LlamaIndex layout: a scan of the table projected to the key.
        """
        for page in self._storage().iter_key_pages():
            yield from page

    async def aiter_keys(self) -> AsyncIterator[str]:
        """Async :meth:`iter_keys`: each page is fetched in a worker thread."""
        pages = await asyncio.to_thread(lambda: iter(self._storage().iter_key_pages()))
        while (page := await asyncio.to_thread(next, pages, None)) is not None:
            for key in page:
                yield key

    # -- writes ----------------------------------------------------------------------------

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append ``message`` atomically, or insert it at ``idx`` like ``list.insert``.

        Concurrent appends to one key are all kept, each writer's in order.

        Raises:
            PayloadTooLargeError: The message is over 16 MB of JSON, or cannot fit
                LlamaIndex's single item (nothing is written).
        """
        key = self._check_key(key)
        # No copy: the JSON is the private copy (a copy first would only cost time, and
        # recurse through deep values that the serializer turns into SerializationError).
        data = message_to_json(coerce_message(message, copy=False))
        if idx is None:
            self._storage().append(key, [data])
        else:
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise TypeError(f"idx must be an int or None, got {type(idx).__qualname__}")
            self._storage().insert(key, idx, data)

    def add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Append ``messages`` atomically and in order (``[]`` changes nothing).

        Raises:
            PayloadTooLargeError: A message is over 16 MB of JSON, or the conversation cannot
                fit LlamaIndex's single item (nothing is written).
        """
        key = self._check_key(key)
        data = [message_to_json(m) for m in coerce_messages(messages, copy=False)]
        if data:
            self._storage().append(key, data)

    def set_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Replace the conversation; readers see the old or the new list (``[]`` removes it)."""
        key = self._check_key(key)
        data = [message_to_json(m) for m in coerce_messages(messages, copy=False)]
        self._storage().replace(key, data)

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Remove the conversation; return its messages in order, ``None`` if it had none."""
        key = self._check_key(key)
        removed = self._storage().delete_all(key)
        return None if removed is None else self._parse_removed(key, list(enumerate(removed)))

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove the message at ``idx`` (negative from the end); ``None`` if out of range.

        Two concurrent callers never receive the same message.
        """
        key = self._check_key(key)
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise TypeError(f"idx must be an int, got {type(idx).__qualname__}")
        removed = self._storage().delete_at(key, idx)
        return None if removed is None else self._parse_removed(key, [removed])[0]

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Remove and return the last message; ``None`` when there is none."""
        return self.delete_message(key, -1)

    def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Remove the first ``n`` messages (fewer if shorter); return them in order."""
        key = self._check_key(key)
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {type(n).__qualname__}")
        removed = self._storage().delete_oldest(key, n)
        return self._parse_removed(key, list(enumerate(removed)))

    def clear(self) -> None:
        """Delete every item of the table (a scan plus batched deletes; for tests/operators)."""
        storage = self._storage()
        table = storage.t
        attributes = [table.pk]
        if isinstance(storage, NativeLayout):
            attributes.append(storage.sk)
            storage.seen.clear()
        for page in table.scan_keys(attributes):
            table.batch_write("clear the table", [{"DeleteRequest": {"Key": k}} for k in page])

    def close(self) -> None:
        """Close the boto3 client; the store makes a new one if used again."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
