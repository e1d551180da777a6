"""The Postgres store's configuration, constructors and connections (its first layer)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from sqlalchemy.engine import URL, Engine, create_engine, make_url

from llama_index.storage.chat_store.core import Capability, ConfigurationError
from llama_index.storage.chat_store.core.backend import NOT_BOOL, PlannedChatStore
from llama_index.storage.chat_store.postgres._drivers import AsyncConnections, SyncConnections
from llama_index.storage.chat_store.postgres._layouts import LayoutName
from llama_index.storage.chat_store.postgres.engine import ConnectorEngine, split_password

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from typing_extensions import Self

    from llama_index.storage.chat_store.postgres._steps import Step

LayoutOption = Literal["auto", "native", "google", "llama_index"]
# Query options of our URLs that configure the store rather than the connection.
_STORE_OPTIONS = {
    "table": "table_name",
    "schema": "schema_name",
    "layout": "layout",
    "ttl": "ttl",
    "refresh_on_read": "refresh_on_read",
    "retries": "retries",
    "retry_backoff": "retry_backoff",
    "retry_deadline": "retry_deadline",
}


# How long the ops table remembers a change (at least): longer than a call may go on retrying.
_RECORD_SECONDS = 300.0


def _bound_engine(maker: Any, name: str) -> Any:
    """Return the engine a SQLAlchemy ``sessionmaker`` (or the engine itself) is bound to.

    Raises:
        TypeError: ``maker`` is neither a sessionmaker nor an engine.
        ConfigurationError: The sessionmaker has no ``bind``.
    """
    from sqlalchemy.ext.asyncio import AsyncEngine

    if maker is None or isinstance(maker, Engine | AsyncEngine):
        return maker
    kw = getattr(maker, "kw", None)
    if not isinstance(kw, dict):
        raise TypeError(
            f"{name} must be a SQLAlchemy sessionmaker (as in LlamaIndex) or an engine, got "
            f"{type(maker).__qualname__}; for a URL use from_uri()"
        )
    engine = kw.get("bind")
    if not isinstance(engine, Engine | AsyncEngine):
        raise ConfigurationError(f"{name} is not bound to an engine: sessionmaker(engine)")
    return engine


def _same_database(a: URL, b: URL) -> bool:
    return (a.host, a.port, a.database, a.username) == (b.host, b.port, b.database, b.username)


class _Config(PlannedChatStore):
    """Fields, validation, constructors and connections of :class:`PostgresChatStore`."""

    connection_string: str
    password: SecretStr | None = Field(default=None, exclude=True)
    table_name: str = "chatstore"
    schema_name: str = "public"
    layout: LayoutOption = "auto"
    ttl: Annotated[float | None, NOT_BOOL] = Field(default=None, gt=0)
    refresh_on_read: bool = False
    use_jsonb: bool = False
    engine_options: dict[str, Any] = Field(default_factory=dict)
    async_connect_options: dict[str, Any] = Field(default_factory=dict)
    max_async_connections: Annotated[int, NOT_BOOL] = Field(default=10, ge=1)

    # What a subclass changes.
    _sync_driver: ClassVar[str] = "postgresql+psycopg"
    """SQLAlchemy driver name of the sync engine built from ``connection_string``."""
    _default_layout: ClassVar[LayoutName] = "native"
    """Layout created when ``auto`` finds no table."""
    _ddl_advisory_lock: ClassVar[bool] = True
    """Serialise schema creation with ``pg_advisory_xact_lock`` (not on YugabyteDB < 2.25)."""
    _row_versions: ClassVar[bool] = True
    """The server has ``ctid`` (not YugabyteDB): a native removal is one checked statement."""
    _llama_index_prefix: ClassVar[str] = ""
    """Prefix of the table name LlamaIndex's own store creates (YugabyteDB: ``data_``)."""
    _sync_only_options: ClassVar[frozenset[str]] = frozenset()
    """URL query options only the sync driver understands (left out of the asyncpg DSN)."""
    _engine_class: ClassVar[type[ConnectorEngine] | None] = None
    """Builds connections from this class's own URL scheme (``alloydb://``, ``cloudsql://``)."""
    _url_schemes: ClassVar[tuple[str, ...]] = (
        "postgresql",
        "postgres",
        "postgresql+asyncpg",
        "postgresql+psycopg",
        "postgresql+psycopg2",
    )

    _sync: SyncConnections | None = PrivateAttr(default=None)
    _async: AsyncConnections | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _user_engine: Engine | None = PrivateAttr(default=None)
    _connector: ConnectorEngine | None = PrivateAttr(default=None)

    @classmethod
    def _engines_connection(
        cls, engine: Engine | AsyncEngine | None, async_engine: Any, data: dict[str, Any]
    ) -> dict[str, Any]:
        """Return ``connection_string`` and ``password`` for the database of the engines."""
        from sqlalchemy.ext.asyncio import AsyncEngine

        if "connection_string" in data:
            raise ConfigurationError("give session/async_session or connection_string, not both")
        if isinstance(engine, AsyncEngine):
            raise ConfigurationError("session is bound to an AsyncEngine; pass it as async_session")
        if async_engine is not None and not isinstance(async_engine, AsyncEngine):
            raise ConfigurationError("async_session must be bound to an AsyncEngine")
        given = engine if engine is not None else async_engine
        if given is None:
            raise ConfigurationError("session or async_session is needed")
        url: URL = given.url
        if (
            engine is not None
            and async_engine is not None
            and not _same_database(url, async_engine.url)
        ):
            raise ConfigurationError(
                "session and async_session are bound to different databases "
                f"({url.render_as_string()} and {async_engine.url.render_as_string()})"
            )
        password = url.password
        plain = url.set(drivername=cls._canonical_scheme(), password=None)
        return {
            "connection_string": plain.render_as_string(hide_password=False),
            "password": data.get("password", str(password) if password is not None else None),
        }

    @classmethod
    def _canonical_scheme(cls) -> str:
        return "postgresql"

    @model_validator(mode="before")
    @classmethod
    def _password_out_of_url(cls, data: Any) -> Any:
        # A password in the user info or in the query (libpq takes both) moves to the
        # ``password`` field, so the URL never carries it into a repr, dump or error.
        if isinstance(data, dict) and isinstance(data.get("connection_string"), str):
            plain, password = split_password(data["connection_string"])
            if password is not None:
                data = {**data, "connection_string": plain}
                if data.get("password") is None:
                    data["password"] = password
        return data

    @model_validator(mode="after")
    def _ttl_needs_native_layout(self) -> Self:
        layout = self._default_layout if self.layout == "auto" else self.layout
        if self.ttl is not None and layout != "native":
            raise ConfigurationError(
                f"ttl needs the native layout (an expiry per conversation); {layout!r} has none"
            )
        if self.refresh_on_read and self.ttl is None:
            raise ConfigurationError(
                "refresh_on_read needs ttl (reads slide the expiry ttl sets); pass ttl= too"
            )
        return self

    @field_validator("table_name", "schema_name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not value or "\x00" in value:
            raise ValueError("table and schema names must be non-empty and without NUL")
        # PostgreSQL cuts identifiers at 63 bytes; derived names must stay distinct.
        if len(value.encode("utf-8")) > 40:
            raise ValueError(f"name {value!r} is longer than 40 UTF-8 bytes")
        return value

    @property
    def capabilities(self) -> frozenset[Capability]:
        """PERSISTENT, SHARED, NATIVE_ASYNC; TTL when ``ttl`` is set; EXACTLY_ONCE when retrying.

        CATALOG on the native layout (``auto`` counts as what it found on first use, before
        it as the layout it would create): the other layouts keep no row per conversation.
        """
        found = {Capability.PERSISTENT, Capability.SHARED, Capability.NATIVE_ASYNC}
        if self.ttl is not None:
            found.add(Capability.TTL)
        if self.retries > 0:
            found.add(Capability.EXACTLY_ONCE)
        if self._layout_in_use() == "native":
            found.add(Capability.CATALOG)
        return frozenset(found)

    def _layout_in_use(self) -> LayoutName:
        """The layout configured (``auto``: the one it would create)."""
        return self._default_layout if self.layout == "auto" else self.layout

    def _record_seconds(self) -> float:
        """How long a change's record is kept: longer than any retry of it may come."""
        return max(_RECORD_SECONDS, 2 * self.retry_deadline)

    def _where(self) -> str:
        """The server and database, password masked, for error messages."""
        parts = urlsplit(self.connection_string)
        netloc = parts.netloc
        if self.password is not None and "@" in netloc:
            user, host = netloc.rsplit("@", 1)
            netloc = f"{user}:***@{host}"
        where = urlunsplit(parts._replace(netloc=netloc))
        return f"PostgreSQL at {where} (table {self.schema_name}.{self.table_name})"

    def _connector_engine(self) -> ConnectorEngine | None:
        """The connector serving this store, if connections do not come from the URL."""
        engine_class = self._engine_class
        scheme = urlsplit(self.connection_string).scheme
        if self._connector is None and engine_class is not None and scheme in self._url_schemes:
            # A store rebuilt from its dump (from_dict) reconnects through its own URL.
            password = self.password.get_secret_value() if self.password is not None else None
            self._connector = engine_class.from_url(self.connection_string, password=password)
        return self._connector

    def _make_sync_engine(self) -> Engine:
        connector = self._connector_engine()
        if connector is not None:
            return connector.sync_engine()
        password = self.password.get_secret_value() if self.password is not None else None
        url = make_url(self.connection_string).set(drivername=self._sync_driver, password=password)
        return create_engine(url, **self.engine_options)

    def _async_connect(self) -> Callable[[], Awaitable[Any]]:
        """Return the coroutine function opening one asyncpg connection."""
        connector = self._connector_engine()
        if connector is not None:
            return connector.aconnect
        import asyncpg

        parts = urlsplit(self.connection_string)
        query = parse_qsl(parts.query, keep_blank_values=True)
        # libpq's connect_timeout is asyncpg's timeout argument; asyncpg would send it to
        # the server as a setting, which the server rejects.
        timeout = dict(query).get("connect_timeout")
        options: dict[str, Any] = {} if timeout is None else {"timeout": float(timeout)}
        dropped = {"connect_timeout", *self._sync_only_options}
        kept = urlencode([(k, v) for k, v in query if k not in dropped])
        dsn = urlunsplit(parts._replace(scheme="postgresql", query=kept))
        password = self.password.get_secret_value() if self.password is not None else None
        options.update(self.async_connect_options)

        async def connect() -> Any:
            return await asyncpg.connect(dsn, password=password, **options)

        return connect

    def _connections(self) -> SyncConnections:
        ready = self._sync
        if ready is not None:  # the hot path takes no lock
            return ready
        with self._lock:
            if self._sync is None:
                if self._user_engine is not None:
                    engine = self._user_engine
                    self._sync = SyncConnections(lambda: engine, self._where(), owns_engine=False)
                else:
                    self._sync = SyncConnections(self._make_sync_engine, self._where())
            return self._sync

    def _aconnections(self) -> AsyncConnections:
        ready = self._async
        if ready is not None:  # the hot path takes no lock
            return ready
        with self._lock:
            if self._async is None:
                self._async = AsyncConnections(
                    self._async_connect(), self._where(), limit=self.max_async_connections
                )
            return self._async

    def _execute(self, step: Step) -> Any:
        """Run one step of a plan on the sync connections."""
        return step.run(self._connections())

    async def _aexecute(self, step: Step) -> Any:
        """Run one step of a plan on this event loop's async connections."""
        return await step.run(self._aconnections())

    def _release_sync(self) -> AsyncConnections | None:
        """Close the sync connections; hand over the async ones (the store reconnects later)."""
        with self._lock:
            sync, self._sync = self._sync, None
            async_, self._async = self._async, None
        if sync is not None:
            sync.close()
        return async_

    def close(self) -> None:
        """Release held connections; the store reconnects if used again."""
        async_ = self._release_sync()
        if async_ is not None:
            async_.close()

    async def aclose(self) -> None:
        """Close this loop's connections and the sync ones; reconnects if used again."""
        async_ = self._release_sync()
        if async_ is not None:
            await async_.aclose()
