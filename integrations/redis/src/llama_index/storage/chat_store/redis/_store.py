"""RedisChatStore: the list layout over redis-py (sync) and redis.asyncio (async)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, Union
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import Field, SecretStr, field_serializer, model_validator

import redis
import redis.asyncio
from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendUnavailableError,
    ChatStoreError,
    ConfigurationError,
    NotSentError,
)
from llama_index.storage.chat_store.core.backend import (
    NOT_BOOL,
    Change,
    Lazy,
    PerLoop,
    Plan,
    mask_url,
    split_password,
    without_secrets,
)
from llama_index.storage.chat_store.core.retries import acall_with_retries
from llama_index.storage.chat_store.redis import _batches
from llama_index.storage.chat_store.redis._buckets import Batch
from llama_index.storage.chat_store.redis._detect import (
    PLAIN_OPTIONS,
    ais_cluster,
    check_namespace,
    is_cluster,
)
from llama_index.storage.chat_store.redis._direct import AsyncDirect, Direct, NotSent, acall, call
from llama_index.storage.chat_store.redis.layout import (
    ListChatStore,
    Op,
    has_hash_tag,
    reply_error,
)
from redis.backoff import NoBackoff
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError
from redis.retry import Retry

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["RedisChatStore"]

T = TypeVar("T")
M = TypeVar("M")

SyncClient = Union[redis.Redis, redis.RedisCluster]  # noqa: UP007 (a runtime alias on 3.10)
AsyncClient = Union[redis.asyncio.Redis, redis.asyncio.RedisCluster]  # noqa: UP007

# Options of ours carried in a URL's query (as text: the fields' types convert and check them,
# an error names the option); everything else in the query goes to redis-py.
_URL_OPTIONS = frozenset(
    {"namespace", "ttl", "ttl_seconds", "retries", "retry_backoff", "retry_deadline", "cluster",
     "refresh_on_read", "connect_timeout"}
)  # fmt: skip


# redis-py client options LlamaIndex's ``**kwargs`` may carry, minus those the store sets
# itself: its own pool, and the reply decoding its scripts rely on.
_STORE_MANAGED = frozenset(
    {"connection_pool", "single_connection_client", "decode_responses", "encoding",
     "encoding_errors"}
)  # fmt: skip
_CLIENT_OPTIONS = PLAIN_OPTIONS - _STORE_MANAGED


def _client_options_out(field_names: frozenset[str], data: dict[str, Any]) -> dict[str, Any]:
    """Move the redis-py options in ``data`` into ``client_options``.

    Raises:
        TypeError: An argument that is neither a store field nor a redis-py client option.
        ConfigurationError: A redis-py option the store manages itself.
    """
    extra = {name: data.pop(name) for name in list(data) if name not in field_names}
    unknown = sorted(name for name in extra if name not in _CLIENT_OPTIONS)
    if unknown:
        managed = [name for name in unknown if name in _STORE_MANAGED]
        if managed:
            raise ConfigurationError(
                f"RedisChatStore sets the redis-py option(s) {', '.join(managed)} itself: its "
                "scripts need raw replies and a pool of its own"
            )
        raise TypeError(
            f"RedisChatStore got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: "
            "neither a store field nor a redis-py client option"
        )
    if extra:
        data["client_options"] = {**data.get("client_options", {}), **extra}
    return data


def _join(scheme: str, netloc: str, path: str, query: str) -> str:
    # urlunsplit drops the '//' of schemes it does not know (unix:///path -> unix:/path).
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


class RedisChatStore(ListChatStore):
    """Chat histories in Redis: one LIST per conversation, every operation one atomic script.

    Example:
        >>> store = RedisChatStore(redis_url="redis://localhost:6379", ttl=300)
        >>> store.add_message("user1", ChatMessage(role="user", content="hi"))

    The default layout is LlamaIndex's own (the list at the raw key), so data written by
    LlamaIndex's ``RedisChatStore`` reads as is and LlamaIndex reads what this store writes;
    :meth:`adopt` makes ``get_keys`` list conversations LlamaIndex wrote. A registry (a
    sorted set next to the conversations) lists this store's keys without scanning the
    database. Redis Cluster is detected (or say ``cluster=True``): a namespace without a
    hash tag (``"app1:"``, or none) spreads its conversations over 128 buckets, each with
    its own registry in its own slot, so the nodes share them and every script stays in one
    slot; a hash-tagged namespace (``"{app1}:"``) keeps all of them in its one slot.

    Constructing the store never connects; the first operation does. Clients are created
    lazily, the async one per event loop. Redis errors become core errors:
    ``BackendUnavailableError`` (unreachable), ``AuthenticationError`` (bad password),
    ``CorruptDataError`` (a key holding something other than messages). A call that loses
    its connection is retried by the store with the same operation id, so a change is
    applied at most once even when its reply was lost (``retries``, ``retry_backoff``,
    ``retry_deadline``; see :class:`ListChatStore`). redis-py's own retries stay off on
    the clients the store builds; the retries of an injected client or of Redis Cluster's
    client are harmless for the same reason.

    Args:
        redis_url: ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL. A password in it is
            moved to ``password`` so dumps never show it.
        password: The Redis password (kept secret).
        namespace: Prefix of every key; "" (default) uses the raw keys, as LlamaIndex does.
        ttl: Seconds a conversation lives after its last change (alias ``ttl_seconds``).
        refresh_on_read: Reads also push the expiry forward.
        cluster: Whether the server is a Redis Cluster; ``None`` (default) asks it on first
            use (one ``CLUSTER INFO``) unless a client is passed in.
        connect_timeout: Seconds to wait for a connection.
        redis_client: A sync client to use instead of one built from the URL (not closed by
            the store).
        aredis_client: A ``redis.asyncio`` client to use for async calls (bound to the loop
            it was created in; not closed by the store).
        client_options: redis-py client options (``socket_timeout``, ``ssl_ca_certs``,
            ``max_connections``, ...) for the clients the store builds. As in LlamaIndex,
            they may also be given as keyword arguments of their own; dumps leave out the
            secret ones (``ssl_password``, ``credential_provider``).
    """

    redis_url: str = "redis://localhost:6379"
    password: SecretStr | None = Field(default=None, exclude=True)
    cluster: bool | None = None
    connect_timeout: Annotated[float | None, NOT_BOOL] = 5.0
    redis_client: SyncClient | None = Field(default=None, exclude=True, repr=False)
    aredis_client: AsyncClient | None = Field(default=None, exclude=True, repr=False)
    client_options: dict[str, Any] = Field(default_factory=dict, repr=False)

    # The clients the store builds (closed with it): a single server's inside its direct
    # path. cached_property, not PrivateAttr: a pydantic private attribute costs about a
    # microsecond on every access, and these are read on every call.
    @cached_property
    def _own_sync(self) -> Lazy[Direct | redis.RedisCluster]:
        return Lazy(self._new_sync_client)

    @cached_property
    def _own_async(self) -> PerLoop[AsyncDirect | redis.asyncio.RedisCluster]:
        return PerLoop(self._new_async_client, aclose=lambda client: client.aclose())

    @model_validator(mode="before")
    @classmethod
    def _password_out_of_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("redis_url"), str):
            url, password = split_password(data["redis_url"], query_wins=False)
            given = data.get("password")
            if isinstance(given, SecretStr):
                given = given.get_secret_value()
            if password is not None and given is not None and given != password:
                raise ValueError("redis_url and password name two different passwords")
            data = {**data, "redis_url": url, "password": password or given}
        return data

    def __init__(
        self,
        redis_url: str | None = None,
        redis_client: SyncClient | None = None,
        aredis_client: AsyncClient | None = None,
        ttl: int | None = None,
        **data: Any,
    ) -> None:
        """Build the store; never connects. LlamaIndex's signature, positional order included.

        Args:
            redis_url: See the class docstring.
            redis_client: See the class docstring.
            aredis_client: See the class docstring.
            ttl: See the class docstring.
            **data: The other fields, and redis-py client options (see ``client_options``).

        Raises:
            TypeError: An argument that is neither a field nor a redis-py client option.
            ConfigurationError: Not a Redis URL, a port that is not a number from 0 to
                65535, or Redis Cluster with a namespace holding ``{`` but no hash tag.
        """
        given = {"redis_url": redis_url, "redis_client": redis_client,
                 "aredis_client": aredis_client, "ttl": ttl}  # fmt: skip
        data.update({name: value for name, value in given.items() if value is not None})
        super().__init__(**_client_options_out(_FIELD_NAMES, data))
        self._check_configuration()

    @field_serializer("client_options")
    def _without_secrets(self, value: dict[str, Any]) -> dict[str, Any]:
        return without_secrets(value)

    def _check_configuration(self) -> None:
        # Outside pydantic validation, which would turn ConfigurationError into ValidationError.
        if self.redis_client is None:
            parts = urlsplit(self.redis_url)
            if parts.scheme not in {"redis", "rediss", "unix"}:
                raise ConfigurationError(
                    f"redis_url must be a redis://, rediss:// or unix:// URL, got {self._where()}"
                )
            try:
                parts.port  # noqa: B018 (parsing it is the check)
            except ValueError as exc:  # redis-py would raise a bare ValueError on first use
                raise ConfigurationError(
                    f"redis_url has an invalid port ({exc}): {self._where()}"
                ) from exc
        if self._given_cluster():
            check_namespace(self.namespace)

    def _given_cluster(self) -> bool | None:
        """Whether the configuration says the server is a cluster (``None``: ask it)."""
        if self.cluster is not None:
            return self.cluster
        if self.redis_client is None and self.aredis_client is None:
            return None
        return isinstance(self.redis_client, redis.RedisCluster) or isinstance(
            self.aredis_client, redis.asyncio.RedisCluster
        )

    @cached_property
    def _clustered(self) -> bool:
        """Whether the server is a Redis Cluster (asked once when not configured)."""
        given = self._given_cluster()
        return self._probe() if given is None else given

    @property
    def _bucketed(self) -> bool:
        """Redis Cluster and no hash tag: conversations spread over buckets."""
        return self._clustered and not has_hash_tag(self.namespace)

    def _probe(self) -> bool:
        try:
            return is_cluster(self.redis_url, self._options(clustered=False), self.namespace)
        except (RedisError, RedisClusterException) as exc:
            raise self._not_sent(exc) from exc

    async def _aprobe(self) -> bool:
        try:
            return await ais_cluster(self.redis_url, self._options(clustered=False), self.namespace)
        except (RedisError, RedisClusterException) as exc:
            raise self._not_sent(exc) from exc

    def _not_sent(self, exc: Exception, op: Op[Any] | None = None) -> ChatStoreError:
        # Raised before the change left (asking the server first, or connecting failed):
        # unreachable is then NotSentError.
        error = self._error(exc, op)
        return NotSentError(str(error)) if type(error) is BackendUnavailableError else error

    # Not coroutines themselves: once the store knows, a call costs no extra await.
    def _aread(self, make: Callable[[], Plan[T]]) -> Coroutine[Any, Any, T]:
        if "_clustered" in self.__dict__:
            return super()._aread(make)
        return self._asking(super()._aread, make, mutates=False)

    def _achange(self, make: Callable[[Change], Plan[T]]) -> Coroutine[Any, Any, T]:
        if "_clustered" in self.__dict__:
            return super()._achange(make)
        return self._asking(super()._achange, make, mutates=True)

    async def _asking(self, run: Callable[[M], Awaitable[T]], make: M, *, mutates: bool) -> T:
        """Learn whether the server is a cluster without blocking the loop, then ``run(make)``.

        ``mutates``: the call is a change (its error then says that nothing was applied).
        """
        given = self._given_cluster()
        if given is None:
            given = await acall_with_retries(self._aprobe, self._retry_policy, mutates=mutates)
        self.__dict__["_clustered"] = given
        return await run(make)

    @property
    def _client_resends(self) -> bool:
        """A cluster client, a client passed in or a retry policy of the caller's may resend."""
        return (
            self._clustered
            or self.redis_client is not None
            or self.aredis_client is not None
            or "retry" in self.client_options
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from ``redis://[[user]:password@]host[:port][/db][?options]``.

        ``rediss://`` connects with TLS, ``unix:///path/redis.sock?db=0`` through a socket.
        Query options of the store: ``namespace``, ``ttl``, ``cluster``, ``refresh_on_read``,
        ``connect_timeout``, ``retries``, ``retry_backoff``, ``retry_deadline``; other query
        options go to redis-py. Keyword ``options`` win.
        """
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {name: value for name, value in query if name in _URL_OPTIONS}
        theirs = [(name, value) for name, value in query if name not in _URL_OPTIONS]
        redis_url = _join(parts.scheme, parts.netloc, parts.path, urlencode(theirs))
        return cls(redis_url=redis_url, **{**ours, **options})

    # -- clients -----------------------------------------------------------------------------

    def _where(self) -> str:
        if self.redis_client is not None:
            return "Redis (the client passed as redis_client)"
        if self.password is None:
            return f"Redis at {self.redis_url}"
        parts = urlsplit(self.redis_url)
        user, _, host = parts.netloc.rpartition("@")
        # The password was moved out of the URL: put a placeholder back for core to mask.
        netloc = f"{user}:password@{host}"
        return f"Redis at {mask_url(_join(parts.scheme, netloc, parts.path, parts.query))}"

    def _options(self, *, clustered: bool) -> dict[str, Any]:
        options: dict[str, Any] = {"socket_connect_timeout": self.connect_timeout}
        if self.password is not None:
            options["password"] = self.password.get_secret_value()
        if not clustered:
            # The store retries itself, with backoff and a deadline: no retries underneath.
            options["retry"] = Retry(NoBackoff(), 0)
        return {**options, **self.client_options}

    def _new_sync_client(self) -> Direct | redis.RedisCluster:
        options = self._options(clustered=self._clustered)
        if self._clustered:
            return redis.RedisCluster.from_url(self.redis_url, **options)
        return Direct(redis.Redis.from_url(self.redis_url, **options))

    def _new_async_client(self) -> AsyncDirect | redis.asyncio.RedisCluster:
        options = self._options(clustered=self._clustered)
        if self._clustered:
            return redis.asyncio.RedisCluster.from_url(self.redis_url, **options)
        return AsyncDirect(redis.asyncio.Redis.from_url(self.redis_url, **options))

    def _error(self, exc: Exception, op: Op[Any] | None = None) -> ChatStoreError:
        if isinstance(exc, NotSent) and isinstance(exc.__cause__, Exception):
            return self._not_sent(exc.__cause__, op)
        where = self._where()
        if isinstance(exc, redis.AuthenticationError):
            return AuthenticationError(f"{where} rejected the credentials: {exc}")
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | RedisClusterException):
            return BackendUnavailableError(f"cannot reach {where}: {exc}")
        if isinstance(exc, redis.ResponseError):
            # redis-py strips the error code (MOVED, CROSSSLOT...) from some messages.
            code = getattr(exc, "status_code", None) or ""
            message = str(exc) if str(exc).startswith(code) else f"{code} {exc}"
            if isinstance(exc, MovedError | AskError):
                message = f"MOVED {exc}"
            return reply_error(message, op, where)
        return ChatStoreError(f"{where} failed: {exc}")

    # -- transport ---------------------------------------------------------------------------

    # A batch goes to a cluster client (one of ours or injected); _batches refuses any other.
    def _execute(self, op: Op[Any] | Batch) -> Any:
        try:
            client = self._own_sync.get() if self.redis_client is None else self.redis_client
            if isinstance(op, Batch):
                return _batches.run(client, op.steps, self._error)
            if isinstance(client, Direct):
                return client.call(op)
            return call(client, op)
        except (RedisError, RedisClusterException, NotSent) as exc:
            raise self._error(exc, None if isinstance(op, Batch) else op) from exc

    async def _aexecute(self, op: Op[Any] | Batch) -> Any:
        if self.redis_client is not None and self.aredis_client is None:
            return await asyncio.to_thread(self._execute, op)
        try:
            client = self._own_async.get() if self.aredis_client is None else self.aredis_client
            if isinstance(op, Batch):
                return await _batches.arun(client, op.steps, self._error)
            if isinstance(client, AsyncDirect):
                return await client.call(op)
            return await acall(client, op)
        except (RedisError, RedisClusterException, NotSent) as exc:
            raise self._error(exc, None if isinstance(op, Batch) else op) from exc

    def _scan_lists(self, pattern: str) -> Iterator[str]:
        try:
            client = self._own_sync.get() if self.redis_client is None else self.redis_client
            client = client.client if isinstance(client, Direct) else client
            for name in client.scan_iter(match=pattern, count=1000, _type="list"):
                try:
                    yield name.decode("utf-8") if isinstance(name, bytes) else name
                except UnicodeDecodeError:
                    continue  # not a key any store could have written
        except (RedisError, RedisClusterException) as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        """Close the sync client's connections (an injected client is left open)."""
        own = self._own_sync.take()
        if own is not None:
            own.close()

    async def aclose(self) -> None:
        """Close this event loop's async client and the sync client."""
        own = self._own_async.take()
        if own is not None:
            await own.aclose()
        self.close()


_FIELD_NAMES = frozenset({*RedisChatStore.model_fields, "ttl_seconds"})  # ttl_seconds: ttl's alias
