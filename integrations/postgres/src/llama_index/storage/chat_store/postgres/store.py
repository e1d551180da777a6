"""PostgresChatStore: chat histories in PostgreSQL, one row per message.

One store class serves the whole Postgres family; YugabyteDB, AlloyDB and Cloud SQL
subclass it and change only how connections are made, which table layout is used and
whether schema changes take an advisory lock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from sqlalchemy import TextClause, text
from sqlalchemy.engine import URL, Engine, create_engine, make_url

from llama_index.storage.chat_store.core import (
    BaseChatStore,
    Capability,
    ChatMessage,
    ChatStoreError,
    ConfigurationError,
    CorruptDataError,
    SerializationError,
    coerce_message,
    coerce_messages,
    message_from_json,
    message_to_json,
    messages_removed,
)
from llama_index.storage.chat_store.core.messages import messages_from_json
from llama_index.storage.chat_store.core.retries import (
    RetryPolicy,
    acall_with_retries,
    call_with_retries,
    new_op_id,
)
from llama_index.storage.chat_store.core.store import check_window
from llama_index.storage.chat_store.postgres import _layouts
from llama_index.storage.chat_store.postgres._drivers import (
    AsyncConnections,
    AsyncRunner,
    Row,
    Runner,
    SyncConnections,
    is_duplicate,
)
from llama_index.storage.chat_store.postgres._layouts import LayoutName, Statements
from llama_index.storage.chat_store.postgres.engine import ConnectorEngine, split_password

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from typing_extensions import Self

__all__ = ["PostgresChatStore"]

T = TypeVar("T")
LayoutOption = Literal["auto", "native", "google", "llama_index"]
_KEYS_PAGE = 100
# Positions beyond any conversation's length that still fit a bigint parameter.
_FAR = 2**62
_FROM_END: Callable[[Statements], TextClause] = operator.attrgetter("delete_from_end")
_FROM_START: Callable[[Statements], TextClause] = operator.attrgetter("delete_from_start")
_DDL_RACE_STATES = {"23505", "42P07", "42710", "40P01"}
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
# How often one store forgets older records (any store on the table forgets everyone's).
_PRUNE_EVERY = 60.0


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


class _PruneClock:
    """When a store next forgets old change records: at most once a minute per table."""

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next = time.monotonic() + _PRUNE_EVERY

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + _PRUNE_EVERY
        return True


@dataclass(frozen=True)
class _Resolved:
    """The table this store uses, found (or created) on first use."""

    statements: Statements
    ddl: list[TextClause]
    pruning: _PruneClock = field(default_factory=_PruneClock)


class _NeedsPosition(Exception):  # noqa: N818 (internal signal, never escapes)
    """A row failed to parse; its position is looked up before raising CorruptDataError."""

    def __init__(self, row_id: int, data: str) -> None:
        self.row_id = row_id
        self.data = data


class PostgresChatStore(BaseChatStore):
    """Chat histories in PostgreSQL: one row per message, atomic single-statement operations.

    Constructing a store never connects; the first operation does, and creates the tables
    if missing (idempotent, safe under concurrent first use). Sync calls use psycopg 3,
    async calls asyncpg; each runs one autocommit statement on a held connection.

    Layouts (``layout=``): ``native`` (ours: ``<table>`` one row per message plus
    ``<table>_conversations`` with counts and expiry), ``llama_index`` (LlamaIndex's
    ``PostgresChatStore`` table: one row per key holding a ``JSON[]``/``JSONB[]`` array;
    ``<table>`` or ``data_<table>``), ``google`` (the AlloyDB / Cloud SQL table), or
    ``auto`` (default): use whichever layout the existing table has, else create ``native``.

    Exactly once: a call that fails for want of the server (a dropped connection, a refused
    connect, a timeout) is retried by the store, up to ``retries`` more times with
    exponential backoff and jitter (from ``retry_backoff`` seconds, doubling) within
    ``retry_deadline`` seconds. Every change carries an operation id, made once per call,
    that the change's own statement records in ``<table>_ops`` (every layout; a table of its
    own next to LlamaIndex's and Google's tables, which stay as those packages expect), so a
    change whose COMMIT reply was lost is recognized on retry: it applies nothing twice and
    returns what the first attempt returned (a removal records the rows it removed). Records
    are kept at least ``max(300, 2 * retry_deadline)`` seconds, then forgotten by a store
    that changes the table (at most once a minute) or by :meth:`sweep`. The drivers never
    resend a statement on their own. When the retries run out the call raises
    :class:`BackendUnavailableError` saying whether the change was applied ("nothing was
    applied" when no attempt reached the server, else "the outcome is unknown").

    Errors: a dead server raises :class:`BackendUnavailableError` (the store recovers when
    it is back), rejected credentials :class:`AuthenticationError`, an unreadable row
    :class:`CorruptDataError` naming the key and position.

    Args:
        connection_string: ``postgresql://user@host:port/db?sslmode=...`` (a password in it
            moves to ``password``); query options are kept for the drivers.
        password: The database password (never shown in repr or dumps).
        table_name: The messages table (the conversations table adds ``_conversations``).
        schema_name: Schema of every table, created if missing.
        layout: ``auto``, ``native``, ``llama_index`` or ``google``.
        ttl: Seconds after its last change when a conversation expires (native layout).
        refresh_on_read: Reads of a live conversation (``get_messages``,
            ``count_messages``) also push its expiry to now + ttl, in the same statement.
            Needs ``ttl``.
        use_jsonb: Element type when this store creates a ``llama_index`` table.
        engine_options: Keyword arguments for SQLAlchemy ``create_engine`` (sync path).
        async_connect_options: Keyword arguments for ``asyncpg.connect`` (async path).
        max_async_connections: Connections per event loop for the async path.
        retries: Times a call that failed for want of the server is tried again (0: never,
            and the store does not claim exactly-once changes).
        retry_backoff: Seconds before the first retry, doubling for each next one.
        retry_deadline: Seconds after the first failure past which no retry starts.

    LlamaIndex's constructor ``PostgresChatStore(session, async_session, table_name,
    schema_name, use_jsonb)`` works too: the sessionmakers' engines give the connection
    (the sync engine serves sync calls through its own pool; async calls connect with
    asyncpg to the same database).
    """

    connection_string: str
    password: SecretStr | None = Field(default=None, exclude=True)
    table_name: str = "chatstore"
    schema_name: str = "public"
    layout: LayoutOption = "auto"
    ttl: float | None = Field(default=None, gt=0)
    refresh_on_read: bool = False
    use_jsonb: bool = False
    engine_options: dict[str, Any] = Field(default_factory=dict)
    async_connect_options: dict[str, Any] = Field(default_factory=dict)
    max_async_connections: int = Field(default=10, ge=1)
    retries: int = Field(default=3, ge=0)
    """Times a call that failed for want of the server is tried again (0: never)."""
    retry_backoff: float = Field(default=0.05, ge=0)
    """Seconds before the first retry, doubling for each next one (jittered)."""
    retry_deadline: float = Field(default=10.0, gt=0)
    """Seconds after which a failing call stops retrying."""

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
    _resolved: _Resolved | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _user_engine: Engine | None = PrivateAttr(default=None)
    _connector: ConnectorEngine | None = PrivateAttr(default=None)

    def __init__(
        self,
        session: Any = None,
        async_session: Any = None,
        table_name: str | None = None,
        schema_name: str | None = None,
        use_jsonb: bool | None = None,
        **data: Any,
    ) -> None:
        """Configure the store; never connects. LlamaIndex's signature, positional order included.

        Args:
            session: A SQLAlchemy ``sessionmaker`` bound to a sync engine (or the engine).
            async_session: A ``sessionmaker``/``async_sessionmaker`` bound to an
                ``AsyncEngine`` (or the engine); only its URL is used.
            table_name: See the class docstring.
            schema_name: See the class docstring.
            use_jsonb: See the class docstring.
            **data: The other fields (``connection_string``, ``password``, ``ttl``, ...).

        Raises:
            TypeError: ``session`` is not a sessionmaker or engine.
            ValueError: An argument the store does not know (named in the message).
            ConfigurationError: Sessions and a connection string together, or sessions
                bound to two different databases.
        """
        given = {"table_name": table_name, "schema_name": schema_name, "use_jsonb": use_jsonb}
        data.update({name: value for name, value in given.items() if value is not None})
        engine = _bound_engine(session, "session")
        async_engine = _bound_engine(async_session, "async_session")
        if engine is not None or async_engine is not None:
            data.update(self._engines_connection(engine, async_engine, data))
        super().__init__(**data)
        if isinstance(engine, Engine):
            self._user_engine = engine

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

    # -- configuration -------------------------------------------------------------------

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

    @classmethod
    def class_name(cls) -> str:
        """Return ``PostgresChatStore``."""
        return "PostgresChatStore"

    @property
    def capabilities(self) -> frozenset[Capability]:
        """PERSISTENT, SHARED, NATIVE_ASYNC; TTL when ``ttl`` is set; EXACTLY_ONCE when retrying."""
        found = {Capability.PERSISTENT, Capability.SHARED, Capability.NATIVE_ASYNC}
        if self.ttl is not None:
            found.add(Capability.TTL)
        if self.retries > 0:
            found.add(Capability.EXACTLY_ONCE)
        return frozenset(found)

    @property
    def _retry_policy(self) -> RetryPolicy:
        return _policy(self.retries, self.retry_backoff, self.retry_deadline)

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

    @classmethod
    def from_uri(
        cls,
        uri: str,
        table_name: str | None = None,
        schema_name: str | None = None,
        debug: bool = False,
        use_jsonb: bool | None = None,
        **options: Any,
    ) -> Self:
        """Build a store from a ``postgresql://`` / ``postgresql+asyncpg://`` URL.

        The positional parameters are LlamaIndex's (``debug`` echoes the sync engine's SQL).
        Query options ``table``, ``schema``, ``layout``, ``ttl``, ``refresh_on_read``
        (``true``/``false``), ``retries``, ``retry_backoff`` and ``retry_deadline``
        configure the store;
        every other option (``sslmode``, ``connect_timeout``, ...) goes to the drivers.
        Keyword ``options`` are store fields (``engine_options``, ``ttl``, ...).

        Raises:
            ConfigurationError: The scheme is not one of this store's.
        """
        given = {"table_name": table_name, "schema_name": schema_name, "use_jsonb": use_jsonb}
        options.update({name: value for name, value in given.items() if value is not None})
        if debug:
            options["engine_options"] = {**options.get("engine_options", {}), "echo": True}
        parts = urlsplit(uri)
        if parts.scheme not in cls._url_schemes:
            raise ConfigurationError(
                f"{cls.__name__} takes {', '.join(s + '://' for s in cls._url_schemes)} URLs, "
                f"got {parts.scheme}://"
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        fields = {_STORE_OPTIONS[k]: v for k, v in query if k in _STORE_OPTIONS}
        kept = urlencode([(k, v) for k, v in query if k not in _STORE_OPTIONS])
        if cls._engine_class is not None:
            engine_args = {
                k: options.pop(k) for k in ("connector", "async_connector") if k in options
            }
            engine = cls._engine_class.from_url(
                urlunsplit(parts._replace(query=kept)),
                password=options.pop("password", None),
                **engine_args,
            )
            return cls.from_engine(engine, **{**fields, **options})
        connection_string = urlunsplit(parts._replace(scheme=cls._canonical_scheme(), query=kept))
        return cls(connection_string=connection_string, **{**fields, **options})

    @classmethod
    def _canonical_scheme(cls) -> str:
        return "postgresql"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Same as :meth:`from_uri` (the registry's entry point)."""
        return cls.from_uri(url, **options)

    @classmethod
    def from_params(
        cls,
        host: str | None = None,
        port: str | int | None = None,
        database: str | None = None,
        user: str | None = None,
        password: str | None = None,
        table_name: str = "chatstore",
        schema_name: str = "public",
        connection_string: str | None = None,
        async_connection_string: str | None = None,
        debug: bool = False,
        use_jsonb: bool = False,
        **options: Any,
    ) -> Self:
        """Build a store from connection parameters (LlamaIndex's signature).

        ``connection_string`` (a SQLAlchemy URL) replaces the parameters;
        ``async_connection_string`` must name the same database (the async path connects
        with asyncpg to it), and is used alone when it is the only URL given.

        Raises:
            ConfigurationError: The two connection strings name different databases.
        """
        if connection_string is not None or async_connection_string is not None:
            uri = connection_string or async_connection_string
            assert uri is not None
            if (
                connection_string is not None
                and async_connection_string is not None
                and not _same_database(
                    make_url(connection_string), make_url(async_connection_string)
                )
            ):
                raise ConfigurationError(
                    "connection_string and async_connection_string name different databases"
                )
            return cls.from_uri(uri, table_name, schema_name, debug, use_jsonb, **options)
        netloc = quote(user or "", safe="")
        netloc = f"{netloc}@" if netloc else ""
        netloc += host or "localhost"
        if port is not None:
            netloc += f":{port}"
        url = urlunsplit(
            (cls._canonical_scheme(), netloc, f"/{quote(database or '', safe='')}", "", "")
        )
        return cls.from_uri(
            url, table_name, schema_name, debug, use_jsonb, password=password, **options
        )

    @classmethod
    def from_engine(
        cls,
        engine: Engine | AsyncEngine | ConnectorEngine,
        async_engine: AsyncEngine | None = None,
        **options: Any,
    ) -> Self:
        """Build a store over an engine the caller made (and keeps owning).

        A SQLAlchemy ``Engine`` serves the sync methods through its own pool and options;
        the async methods connect with asyncpg to the same URL and credentials (an
        ``AsyncEngine``, as ``engine`` or ``async_engine``, contributes its URL). A
        :class:`ConnectorEngine` serves both through its callables.
        """
        from sqlalchemy.ext.asyncio import AsyncEngine

        if isinstance(engine, ConnectorEngine):
            store = cls(connection_string=engine.url, password=engine.password, **options)
            if engine.uses_connector:
                store._connector = engine
            return store
        sync_engine = engine if isinstance(engine, Engine) else None
        if isinstance(engine, AsyncEngine):
            async_engine = engine
        return cls(session=sync_engine, async_session=async_engine, **options)

    def _connector_engine(self) -> ConnectorEngine | None:
        """The connector serving this store, if connections do not come from the URL."""
        engine_class = self._engine_class
        scheme = urlsplit(self.connection_string).scheme
        if self._connector is None and engine_class is not None and scheme in self._url_schemes:
            # A store rebuilt from its dump (from_dict) reconnects through its own URL.
            password = self.password.get_secret_value() if self.password is not None else None
            self._connector = engine_class.from_url(self.connection_string, password=password)
        return self._connector

    @classmethod
    def create_sync(
        cls, engine: ConnectorEngine, table_name: str, schema_name: str = "public"
    ) -> Self:
        """Open (creating if missing) the table of ``engine``'s database; return the store."""
        store = cls.from_engine(engine, table_name=table_name, schema_name=schema_name)
        store.init_table()
        return store

    @classmethod
    async def create(
        cls, engine: ConnectorEngine, table_name: str, schema_name: str = "public"
    ) -> Self:
        """Async :meth:`create_sync`."""
        store = cls.from_engine(engine, table_name=table_name, schema_name=schema_name)
        await store.ainit_table()
        return store

    # -- connections ---------------------------------------------------------------------

    def _sync_url(self) -> URL:
        url = make_url(self.connection_string).set(drivername=self._sync_driver)
        if self.password is not None:
            url = url.set(password=self.password.get_secret_value())
        return url

    def _make_sync_engine(self) -> Engine:
        connector = self._connector_engine()
        if connector is not None:
            return connector.sync_engine()
        return create_engine(self._sync_url(), **self.engine_options)

    def _async_connect(self) -> Callable[[], Awaitable[Any]]:
        """Return the coroutine function opening one asyncpg connection."""
        connector = self._connector_engine()
        if connector is not None:
            return connector.aconnect
        import asyncpg

        parts = urlsplit(self.connection_string)
        query = parse_qsl(parts.query, keep_blank_values=True)
        options: dict[str, Any] = {}
        for name, value in query:
            # libpq's connect_timeout is asyncpg's timeout argument; asyncpg would send it to
            # the server as a setting, which the server rejects.
            if name == "connect_timeout":
                options["timeout"] = float(value)
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

    # -- the table -----------------------------------------------------------------------

    def _candidates(self) -> list[str]:
        table = self.table_name
        return [
            table,
            f"data_{table}",
            _layouts.conversations_table(table),
            _layouts.ops_table(table),
            _layouts.ops_table(f"data_{table}"),
        ]

    def _resolve(self, columns: list[Row], schema_exists: bool) -> _Resolved:
        """Pick the layout from the existing tables' columns; list the DDL still needed."""
        tables: dict[str, dict[str, str]] = {}
        for table, column, type_ in columns:
            tables.setdefault(table, {})[column] = type_
        wanted = self.layout
        table = self.table_name
        found = tables.get(table)
        legacy = tables.get(f"data_{table}")
        if found is None and legacy is not None and "value" in legacy:
            table, found = f"data_{table}", legacy
        if found is None:
            layout: LayoutName = self._default_layout if wanted == "auto" else wanted
            if layout == "llama_index":
                table = f"{self._llama_index_prefix}{table}"
            return self._resolved_for(layout, table, "jsonb" if self.use_jsonb else "json", [
                *_layouts.create_statements(
                    layout, self.schema_name, table,
                    element_type="jsonb" if self.use_jsonb else "json",
                    create_schema=not schema_exists,
                )
            ])  # fmt: skip
        detected, element = self._detect(table, found, tables)
        ops_statement = _layouts.ops_statement(self.schema_name, table)
        if wanted not in ("auto", detected):
            raise ConfigurationError(
                f"table {self.schema_name}.{table} already holds the {detected!r} layout, not "
                f"{wanted!r}: pass layout={detected!r} (or 'auto'), or choose another table_name"
            )
        # A table made by LlamaIndex, Google or an older version of this store gets its ops table.
        ddl = [] if _layouts.ops_table(table) in tables else [text(ops_statement)]
        return self._resolved_for(detected, table, element, ddl)

    def _detect(
        self, table: str, columns: dict[str, str], tables: dict[str, dict[str, str]]
    ) -> tuple[LayoutName, str]:
        value = columns.get("value", "")
        if {"key", "value"} <= columns.keys() and value.endswith("[]"):
            return "llama_index", value[:-2]
        if {"id", "key", "message"} <= columns.keys():
            if _layouts.conversations_table(table) in tables:
                return "native", "json"
            return "google", "json"
        raise ConfigurationError(
            f"table {self.schema_name}.{table} exists but is not a chat store table "
            f"(columns {sorted(columns)}); choose another table_name"
        )

    def _resolved_for(
        self, layout: LayoutName, table: str, element: str, ddl: list[TextClause]
    ) -> _Resolved:
        if self.ttl is not None and layout != "native":
            raise ConfigurationError(
                f"ttl needs the native layout; table {self.schema_name}.{table} uses {layout!r}"
            )
        statements = _layouts.statements_for(
            layout,
            self.schema_name,
            table,
            element,
            refresh_on_read=self.refresh_on_read,
            row_versions=self._row_versions,
        )
        return _Resolved(statements=statements, ddl=ddl)

    def _lock_id(self) -> int:
        digest = hashlib.sha256(f"{self.schema_name}.{self.table_name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _statements(self) -> Statements:
        resolved = self._resolved
        if resolved is not None:
            return resolved.statements
        connections = self._connections()
        for attempt in range(2):
            names = {"schema": self.schema_name, "names": self._candidates()}
            columns = connections.fetch(_layouts.DETECT, names)
            schema_exists = bool(
                connections.fetch(_layouts.SCHEMA_EXISTS, {"schema": self.schema_name})[0][0]
            )
            resolved = self._resolve(columns, schema_exists)
            try:
                if resolved.ddl:

                    def create(tx: Runner, names: dict[str, Any] = names) -> _Resolved:
                        # Under the lock, look again: another session may have just made
                        # the tables, and even a no-op CREATE INDEX locks the table against
                        # writers already using it (a deadlock with their appends).
                        if self._ddl_advisory_lock:
                            tx.fetch(_layouts.ADVISORY_LOCK, {"lock": self._lock_id()})
                        columns = tx.fetch(_layouts.DETECT, names)
                        exists = tx.fetch(_layouts.SCHEMA_EXISTS, {"schema": self.schema_name})
                        found = self._resolve(columns, bool(exists[0][0]))
                        for statement in found.ddl:
                            tx.fetch(statement, {})
                        return found

                    resolved = connections.transaction(create)
                break
            except Exception as exc:
                if attempt or not _ddl_race(exc):
                    raise
        assert resolved is not None
        self._resolved = resolved
        return resolved.statements

    async def _astatements(self) -> Statements:
        resolved = self._resolved
        if resolved is not None:
            return resolved.statements
        connections = self._aconnections()
        for attempt in range(2):
            names = {"schema": self.schema_name, "names": self._candidates()}
            columns = await connections.fetch(_layouts.DETECT, names)
            schema_rows = await connections.fetch(
                _layouts.SCHEMA_EXISTS, {"schema": self.schema_name}
            )
            resolved = self._resolve(columns, bool(schema_rows[0][0]))
            try:
                if resolved.ddl:

                    async def create(tx: AsyncRunner, names: dict[str, Any] = names) -> _Resolved:
                        if self._ddl_advisory_lock:
                            await tx.fetch(_layouts.ADVISORY_LOCK, {"lock": self._lock_id()})
                        columns = await tx.fetch(_layouts.DETECT, names)
                        schema = {"schema": self.schema_name}
                        exists = await tx.fetch(_layouts.SCHEMA_EXISTS, schema)
                        found = self._resolve(columns, bool(exists[0][0]))
                        for statement in found.ddl:
                            await tx.fetch(statement, {})
                        return found

                    resolved = await connections.transaction(create)
                break
            except Exception as exc:
                if attempt or not _ddl_race(exc):
                    raise
        assert resolved is not None
        self._resolved = resolved
        return resolved.statements

    # -- parameters and results (shared by sync and async) -------------------------------

    def _ttl(self) -> float | None:
        return float(self.ttl) if self.ttl is not None else None

    def _key_params(self, key: str) -> dict[str, Any]:
        """``key``, its advisory lock id (Google's layout) and ``ttl``: every change binds them."""
        name = "\x00".join((self.schema_name, self.table_name, key)).encode("utf-8")
        lock = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
        return {"key": key, "lock": lock, "ttl": self._ttl()}

    def _window(
        self, st: Statements, key: str, offset: int, limit: int | None
    ) -> tuple[TextClause, dict[str, Any]]:
        ttl = self._ttl()  # used only by refresh_on_read statements
        if offset < 0:
            return st.get_tail, {"key": key, "tail": -offset, "limit": limit, "ttl": ttl}
        return st.get_head, {"key": key, "offset": offset, "limit": limit, "ttl": ttl}

    def _count_params(self, key: str) -> dict[str, Any]:
        return {"key": key, "ttl": self._ttl()}  # ttl: used only by refresh_on_read

    def _delete_at(
        self, key: str, idx: int
    ) -> tuple[Callable[[Statements], TextClause], dict[str, Any]] | None:
        """The statement removing position ``idx``; ``None`` when no conversation has it."""
        if not -_FAR <= idx < _FAR:
            return None
        if idx < 0:
            return _FROM_END, {**self._key_params(key), "offset": -1 - idx}
        return _FROM_START, {**self._key_params(key), "offset": idx}

    def _append_params(self, key: str, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        texts = [message_to_json(m) for m in messages]
        return {**self._key_params(key), "messages": texts, "n": len(texts)}

    def _append_one_params(self, key: str, message: ChatMessage) -> dict[str, Any]:
        return {**self._key_params(key), "message": message_to_json(message)}

    @staticmethod
    def _index(idx: Any) -> int:
        """``idx`` as an int, as ``list.insert`` takes it (TypeError otherwise)."""
        return operator.index(idx)

    @staticmethod
    def _insert(
        st: Statements, params: dict[str, Any], idx: int, count: int
    ) -> tuple[TextClause, dict[str, Any]]:
        """The statement inserting at ``idx`` (``list.insert`` rules) into ``count`` messages."""
        position = max(count + idx, 0) if idx < 0 else min(idx, count)
        if position >= count:
            return st.append, params
        return st.insert_at, {**params, "idx": position}

    @staticmethod
    def _count(rows: list[Row]) -> int:
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    @staticmethod
    def _parse(key: str, rows: list[Row], st: Statements) -> list[ChatMessage]:
        """Parse a read's ``(id_or_position, message_text)`` rows through core's batch decoder.

        Raises:
            _NeedsPosition: A row of a layout that reads row ids is unreadable (its position
                is looked up before the error is raised).
        """
        texts = [data for _, data in rows]
        if st.positions:  # contiguous positions: the first names every other
            return messages_from_json(texts, key=key, start=int(rows[0][0]) if rows else 0)
        try:
            return messages_from_json(texts, key=key)
        except (CorruptDataError, SerializationError) as exc:
            # The error's position is the row's index in this read; its id finds the real one.
            ident, data = rows[exc.position or 0]
            raise _NeedsPosition(ident, data) from exc

    @staticmethod
    def _removed(key: str, rows: list[Row]) -> list[ChatMessage]:
        """Parse what a removal returned: ``(position it had, message_text)`` rows.

        Raises:
            CorruptDataError: A removed message is unreadable (the first one, by position).
                The removal is done (it was atomic, and refusing it would leave corrupt data
                no delete could remove): the error says so and carries the stored data.
            SerializationError: The same, for a message LlamaIndex's model cannot hold.
        """
        pairs = [(int(position), data) for position, data in rows]
        return messages_removed(key, pairs, storage="PostgreSQL")

    # -- retries: every call runs through core's retry loop ------------------------------

    def _table(self) -> _Resolved:
        """The resolved table (resolving it on first use)."""
        resolved = self._resolved
        if resolved is None:
            self._statements()
            resolved = self._resolved
            assert resolved is not None
        return resolved

    async def _atable(self) -> _Resolved:
        """Async :meth:`_table`."""
        resolved = self._resolved
        if resolved is None:
            await self._astatements()
            resolved = self._resolved
            assert resolved is not None
        return resolved

    def _retried(self, attempt: Callable[[], T], *, mutates: bool = False) -> T:
        """Run ``attempt`` (a read, or a change that is idempotent), retried per the policy."""
        return call_with_retries(attempt, self._retry_policy, mutates=mutates)

    def _once(
        self,
        params: dict[str, Any],
        change: Callable[[Statements, SyncConnections, dict[str, Any]], list[Row]],
    ) -> list[Row]:
        """Apply ``change(statements, connections, params)`` once, however often it is retried.

        Every attempt passes ``params`` with the same operation id ``op``, which the change's
        statements record in the ops table in the transaction that applies it. An attempt
        after one that may have reached the server first looks ``op`` up: found, the change
        was applied and only its reply was lost, so the recorded reply (the removed rows) is
        returned.

        Raises:
            BackendUnavailableError: Every attempt failed for want of the server (the message
                says whether the change may have been applied).
        """
        op = new_op_id()
        params = {**params, "op": op}
        sent = False

        def attempt() -> list[Row]:
            nonlocal sent
            table = self._table()
            st = table.statements
            connections = self._connections()
            if sent:
                found = connections.fetch(st.recorded, {"op": op})
                if found:
                    return _replayed(found)
            elif table.pruning.due():
                connections.fetch(st.prune, {"keep": self._record_seconds()})
            sent = True
            try:
                return change(st, connections, params)
            except ChatStoreError as exc:
                if not is_duplicate(exc):
                    raise
                # Another attempt of this call, still running when this one started, won.
                found = connections.fetch(st.recorded, {"op": op})
                if not found:
                    raise
                return _replayed(found)

        return call_with_retries(attempt, self._retry_policy, mutates=True)

    # -- sync API ------------------------------------------------------------------------

    def _messages(self, key: str, st: Statements, rows: list[Row]) -> list[ChatMessage]:
        try:
            return self._parse(key, rows, st)
        except _NeedsPosition as bad:
            assert st.position_of is not None
            found = self._connections().fetch(st.position_of, {"key": key, "id": bad.row_id})
            message_from_json(bad.data, key=key, position=int(found[0][0]))
            raise AssertionError("unreachable: the row did not parse") from None

    def _change(
        self, key: str, clause: TextClause, params: dict[str, Any], lock: TextClause | None = None
    ) -> list[Row]:
        """Run a change of conversation ``key``: after its lock (row layouts), in one transaction.

        Native layout: when ``lock`` finds no conversation row it locks nothing, so the
        change is not run: the conversation was empty when the lock ran (every message row
        has its conversation row), and a change run later would act on a conversation
        created meanwhile without holding its lock (a concurrent append would not wait, and
        the change would miss it). Writers that create the conversation (replace, insert
        at an index) pass ``lock_for_replace``, which always returns its row.

        Args:
            key: The conversation.
            clause: The change; its snapshot is taken once the lock is held.
            params: The change's parameters.
            lock: The lock statement, if not the layout's ``lock``.
        """
        st = self._statements()
        lock = lock if lock is not None else st.lock
        if lock is None:
            return self._connections().fetch(clause, params)
        key_params = self._key_params(key)

        def locked(tx: Runner) -> list[Row]:
            if not tx.fetch(lock, key_params) and st.layout == "native":
                return []  # no conversation when the lock ran: nothing to change
            return tx.fetch(clause, params)

        return self._connections().transaction(locked)

    def _remove(self, key: str, clause: TextClause, params: dict[str, Any]) -> list[Row]:
        """Run removal ``clause`` of conversation ``key`` as its layout runs removals.

        ``single``: one statement, and again after the lock in a transaction if its snapshot
        was stale (another writer of the key committed while it waited for the lock).
        ``pipelined``: twice in one transaction and round trip, the first run taking the
        lock. ``locked``: after the lock in a transaction. Returns the removed rows.
        """
        st = self._statements()
        connections = self._connections()
        if st.removal == "pipelined":
            runs = [{**params, "held": False}, {**params, "held": True}]
            return _acted(connections.fetch_many(clause, runs))
        if st.removal == "single":
            rows = connections.fetch(clause, params)
            if not _stale(rows):
                return rows
        return _acted(self._change(key, clause, params))

    def get_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ChatMessage]:
        """Return ``messages[offset:][:limit]`` (one indexed statement; ``[]`` if missing).

        With ``refresh_on_read`` the same statement pushes a live conversation's expiry
        to now + ttl (an expired one stays expired).
        """
        key = self._check_key(key)
        check_window(offset, limit)
        if limit == 0:
            return []

        def read() -> list[ChatMessage]:
            st = self._statements()
            clause, params = self._window(st, key, offset, limit)
            return self._messages(key, st, self._connections().fetch(clause, params))

        return self._retried(read)

    def count_messages(self, key: str) -> int:
        """Return the number of messages under ``key`` (0 if missing or expired).

        With ``refresh_on_read`` the same statement pushes a live conversation's expiry
        to now + ttl.
        """
        key = self._check_key(key)
        params = self._count_params(key)
        return self._count(
            self._retried(lambda: self._connections().fetch(self._statements().count, params))
        )

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append ``message`` in one statement, or insert it at ``idx`` like ``list.insert``.

        An insert is one transaction that holds the conversation's lock, so concurrent
        writers of the key see the conversation before or after it, never during.

        Raises:
            TypeError: ``idx`` is not an int (as ``list.insert`` raises).
        """
        key = self._check_key(key)
        if idx is not None:
            idx = self._index(idx)
        message = coerce_message(message, copy=False)  # serialized at once, never kept
        if idx is None:
            one = self._append_one_params(key, message)
            self._once(one, self._append_one)
            return
        params = {**self._append_params(key, [message]), "idx": max(min(idx, _FAR), -_FAR)}
        self._once(params, lambda st, connections, p: self._insert_at(st, connections, p, idx))

    def _append_one(
        self, st: Statements, connections: SyncConnections, params: dict[str, Any]
    ) -> list[Row]:
        rows = connections.fetch(st.append_one, params)
        if rows:
            return rows
        # Native layout: no live conversation row to update; the upsert creates it.
        return connections.fetch(st.append, {**params, "messages": [params["message"]], "n": 1})

    def _insert_at(
        self, st: Statements, connections: SyncConnections, params: dict[str, Any], idx: int
    ) -> list[Row]:
        if st.lock is None:
            return connections.fetch(st.insert_at, params)
        # The lock that creates the conversation row: with no row, ``lock`` would not wait
        # for a writer creating the conversation and the message would land at its end.
        lock = st.lock_for_replace
        assert lock is not None

        def insert(tx: Runner) -> list[Row]:
            rows = tx.fetch(lock, params)
            if st.layout == "google":  # the advisory lock counts nothing
                rows = tx.fetch(st.count, params)
            return tx.fetch(*self._insert(st, params, idx, self._count(rows)))

        return connections.transaction(insert)

    def add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Append ``messages`` in order in one statement (``[]`` changes nothing)."""
        key = self._check_key(key)
        batch = coerce_messages(messages)
        if batch:
            params = self._append_params(key, batch)
            self._once(params, lambda st, connections, p: connections.fetch(st.append, p))

    def set_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Replace the conversation atomically; ``[]`` removes it."""
        key = self._check_key(key)
        batch = coerce_messages(messages)
        if not batch:
            params = self._key_params(key)
            self._once(params, lambda st, _, p: self._remove(key, st.delete_all, p))
            return
        replace = self._append_params(key, batch)
        self._once(replace, lambda st, _, p: self._change(key, st.replace, p, st.lock_for_replace))

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Remove the conversation; return its messages in order (``None`` if none).

        Holds the conversation's lock: a message appended at the same time is either
        returned (and removed) or stays, never left behind uncounted.

        Raises:
            CorruptDataError: A removed message is unreadable; the conversation is removed
                all the same (the error names the first such position and holds its data).
        """
        key = self._check_key(key)
        params = self._key_params(key)
        rows = self._once(params, lambda st, _, p: self._remove(key, st.delete_all, p))
        return self._removed(key, rows) or None

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove and return the message at ``idx`` (``None`` if out of range).

        Holds the conversation's lock, so the position is that of the conversation as
        every write committed before left it. Two concurrent callers never receive the
        same message.

        Raises:
            TypeError: ``idx`` is not an int.
            CorruptDataError: The removed message is unreadable; it is removed all the same
                (the error holds its data).
        """
        key = self._check_key(key)
        found = self._delete_at(key, self._index(idx))
        if found is None:
            return None
        clause_of, params = found
        rows = self._once(params, lambda st, _, p: self._remove(key, clause_of(st), p))
        removed = self._removed(key, rows)
        return removed[0] if removed else None

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Remove and return the last message (``None`` when empty)."""
        return self.delete_message(key, -1)

    def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Remove the first ``n`` messages; return them in order.

        Raises:
            CorruptDataError: A removed message is unreadable; the ``n`` are removed all the
                same (the error names the first such position and holds its data).
        """
        key = self._check_key(key)
        if n <= 0:
            return []
        params = {**self._key_params(key), "n": min(n, _FAR)}
        rows = self._once(params, lambda st, _, p: self._remove(key, st.delete_oldest, p))
        return self._removed(key, rows)

    def iter_keys(self) -> Iterator[str]:
        """Yield the keys holding messages, in pages of 100 (constant memory)."""
        after = ""
        while True:
            page: dict[str, Any] = {"after": after, "page": _KEYS_PAGE}

            def fetch(page: dict[str, Any] = page) -> list[Row]:
                return self._connections().fetch(self._statements().keys_page, page)

            rows = self._retried(fetch)
            for (key,) in rows:
                yield key
            if len(rows) < _KEYS_PAGE:
                return
            after = rows[-1][0]

    def clear(self) -> None:
        """Remove every conversation in this store's table.

        Waits for the writers at work on the table, so none of their writes is half kept.
        The records of recent changes stay (a retry of a change made before must still
        find it applied); they are forgotten as they age.
        """

        def clear() -> None:
            st = self._statements()
            lock_all = st.lock_all
            if lock_all is None:
                self._connections().fetch(st.clear, {})
                return

            def locked(tx: Runner) -> None:
                tx.fetch(lock_all, {})
                tx.fetch(st.clear, {})

            self._connections().transaction(locked)

        self._retried(clear, mutates=True)

    def sweep(self) -> int:
        """Purge expired conversations (and emptied bookkeeping rows); return how many.

        Expired conversations are already invisible to reads; this reclaims their space.
        Also forgets the records of changes older than the retries that could need them.
        """

        def sweep() -> int:
            st = self._statements()
            connections = self._connections()
            connections.fetch(st.prune, {"keep": self._record_seconds()})
            return 0 if st.sweep is None else int(connections.fetch(st.sweep, {})[0][0])

        return self._retried(sweep, mutates=True)

    def init_table(self, overwrite_existing: bool = False) -> None:
        """Create the tables now instead of on first use (idempotent).

        Args:
            overwrite_existing: Drop this store's tables first (their data is lost).
        """
        if overwrite_existing:
            drops = self._drop_statements()

            def drop(tx: Runner) -> None:
                for statement in drops:
                    tx.fetch(statement, {})

            self._retried(lambda: self._connections().transaction(drop), mutates=True)
            self._resolved = None
        self._retried(self._statements, mutates=True)

    def _drop_statements(self) -> list[TextClause]:
        layout = self._default_layout if self.layout == "auto" else self.layout
        return _layouts.drop_statements(layout, self.schema_name, self.table_name)

    async def ainit_table(self, overwrite_existing: bool = False) -> None:
        """Async :meth:`init_table`."""
        if overwrite_existing:
            drops = self._drop_statements()

            async def drop(tx: AsyncRunner) -> None:
                for statement in drops:
                    await tx.fetch(statement, {})

            await self._aretried(lambda: self._aconnections().transaction(drop), mutates=True)
            self._resolved = None
        await self._aretried(self._astatements, mutates=True)

    def close(self) -> None:
        """Release held connections; the store reconnects if used again."""
        with self._lock:
            sync, self._sync = self._sync, None
            async_, self._async = self._async, None
        if sync is not None:
            sync.close()
        if async_ is not None:
            async_.close()

    # -- async API -----------------------------------------------------------------------

    async def _aretried(self, attempt: Callable[[], Awaitable[T]], *, mutates: bool = False) -> T:
        """Async :meth:`_retried`."""
        return await acall_with_retries(attempt, self._retry_policy, mutates=mutates)

    async def _aonce(
        self,
        params: dict[str, Any],
        change: Callable[[Statements, AsyncConnections, dict[str, Any]], Awaitable[list[Row]]],
    ) -> list[Row]:
        """Async :meth:`_once`."""
        op = new_op_id()
        params = {**params, "op": op}
        sent = False

        async def attempt() -> list[Row]:
            nonlocal sent
            table = await self._atable()
            st = table.statements
            connections = self._aconnections()
            if sent:
                found = await connections.fetch(st.recorded, {"op": op})
                if found:
                    return _replayed(found)
            elif table.pruning.due():
                await connections.fetch(st.prune, {"keep": self._record_seconds()})
            sent = True
            try:
                return await change(st, connections, params)
            except ChatStoreError as exc:
                if not is_duplicate(exc):
                    raise
                found = await connections.fetch(st.recorded, {"op": op})
                if not found:
                    raise
                return _replayed(found)

        return await acall_with_retries(attempt, self._retry_policy, mutates=True)

    async def _amessages(self, key: str, st: Statements, rows: list[Row]) -> list[ChatMessage]:
        try:
            return self._parse(key, rows, st)
        except _NeedsPosition as bad:
            assert st.position_of is not None
            found = await self._aconnections().fetch(st.position_of, {"key": key, "id": bad.row_id})
            message_from_json(bad.data, key=key, position=int(found[0][0]))
            raise AssertionError("unreachable: the row did not parse") from None

    async def _achange(
        self, key: str, clause: TextClause, params: dict[str, Any], lock: TextClause | None = None
    ) -> list[Row]:
        """Async :meth:`_change`."""
        st = await self._astatements()
        lock = lock if lock is not None else st.lock
        if lock is None:
            return await self._aconnections().fetch(clause, params)
        key_params = self._key_params(key)

        async def locked(tx: AsyncRunner) -> list[Row]:
            if not await tx.fetch(lock, key_params) and st.layout == "native":
                return []  # as in ``_change``
            return await tx.fetch(clause, params)

        return await self._aconnections().transaction(locked)

    async def _aremove(self, key: str, clause: TextClause, params: dict[str, Any]) -> list[Row]:
        """Async :meth:`_remove`."""
        st = await self._astatements()
        connections = self._aconnections()
        if st.removal == "pipelined":
            runs = [{**params, "held": False}, {**params, "held": True}]
            return _acted(await connections.fetch_many(clause, runs))
        if st.removal == "single":
            rows = await connections.fetch(clause, params)
            if not _stale(rows):
                return rows
        return _acted(await self._achange(key, clause, params))

    async def aget_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ChatMessage]:
        """Async :meth:`get_messages`."""
        key = self._check_key(key)
        check_window(offset, limit)
        if limit == 0:
            return []

        async def read() -> list[ChatMessage]:
            st = await self._astatements()
            clause, params = self._window(st, key, offset, limit)
            return await self._amessages(key, st, await self._aconnections().fetch(clause, params))

        return await self._aretried(read)

    async def acount_messages(self, key: str) -> int:
        """Async :meth:`count_messages`."""
        key = self._check_key(key)
        params = self._count_params(key)

        async def count() -> list[Row]:
            st = await self._astatements()
            return await self._aconnections().fetch(st.count, params)

        return self._count(await self._aretried(count))

    async def aadd_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Async :meth:`add_message`."""
        key = self._check_key(key)
        if idx is not None:
            idx = self._index(idx)
        message = coerce_message(message, copy=False)  # serialized at once, never kept
        if idx is None:
            one = self._append_one_params(key, message)
            await self._aonce(one, self._aappend_one)
            return
        params = {**self._append_params(key, [message]), "idx": max(min(idx, _FAR), -_FAR)}
        await self._aonce(
            params, lambda st, connections, p: self._ainsert_at(st, connections, p, idx)
        )

    async def _aappend_one(
        self, st: Statements, connections: AsyncConnections, params: dict[str, Any]
    ) -> list[Row]:
        rows = await connections.fetch(st.append_one, params)
        if rows:
            return rows
        appended = {**params, "messages": [params["message"]], "n": 1}
        return await connections.fetch(st.append, appended)

    async def _ainsert_at(
        self, st: Statements, connections: AsyncConnections, params: dict[str, Any], idx: int
    ) -> list[Row]:
        if st.lock is None:
            return await connections.fetch(st.insert_at, params)
        lock = st.lock_for_replace  # as in add_message: it waits for a creating writer
        assert lock is not None

        async def insert(tx: AsyncRunner) -> list[Row]:
            rows = await tx.fetch(lock, params)
            if st.layout == "google":  # the advisory lock counts nothing
                rows = await tx.fetch(st.count, params)
            return await tx.fetch(*self._insert(st, params, idx, self._count(rows)))

        return await connections.transaction(insert)

    async def aadd_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`add_messages`."""
        key = self._check_key(key)
        batch = coerce_messages(messages)
        if batch:
            params = self._append_params(key, batch)
            await self._aonce(params, lambda st, connections, p: connections.fetch(st.append, p))

    async def aset_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Async :meth:`set_messages`."""
        key = self._check_key(key)
        batch = coerce_messages(messages)
        if not batch:
            params = self._key_params(key)
            await self._aonce(params, lambda st, _, p: self._aremove(key, st.delete_all, p))
            return
        replace = self._append_params(key, batch)
        await self._aonce(
            replace, lambda st, _, p: self._achange(key, st.replace, p, st.lock_for_replace)
        )

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        """Async :meth:`delete_messages`."""
        key = self._check_key(key)
        params = self._key_params(key)
        rows = await self._aonce(params, lambda st, _, p: self._aremove(key, st.delete_all, p))
        return self._removed(key, rows) or None

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Async :meth:`delete_message`."""
        key = self._check_key(key)
        found = self._delete_at(key, self._index(idx))
        if found is None:
            return None
        clause_of, params = found
        rows = await self._aonce(params, lambda st, _, p: self._aremove(key, clause_of(st), p))
        removed = self._removed(key, rows)
        return removed[0] if removed else None

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        """Async :meth:`delete_last_message`."""
        return await self.adelete_message(key, -1)

    async def adelete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Async :meth:`delete_oldest_messages`."""
        key = self._check_key(key)
        if n <= 0:
            return []
        params = {**self._key_params(key), "n": min(n, _FAR)}
        rows = await self._aonce(params, lambda st, _, p: self._aremove(key, st.delete_oldest, p))
        return self._removed(key, rows)

    async def aiter_keys(self) -> AsyncIterator[str]:
        """Async :meth:`iter_keys`."""
        after = ""
        while True:
            page = {"after": after, "page": _KEYS_PAGE}

            async def fetch(page: dict[str, Any] = page) -> list[Row]:
                st = await self._astatements()
                return await self._aconnections().fetch(st.keys_page, page)

            rows = await self._aretried(fetch)
            for (key,) in rows:
                yield key
            if len(rows) < _KEYS_PAGE:
                return
            after = rows[-1][0]

    async def aclear(self) -> None:
        """Async :meth:`clear`."""

        async def clear() -> None:
            st = await self._astatements()
            lock_all = st.lock_all
            if lock_all is None:
                await self._aconnections().fetch(st.clear, {})
                return

            async def locked(tx: AsyncRunner) -> None:
                await tx.fetch(lock_all, {})
                await tx.fetch(st.clear, {})

            await self._aconnections().transaction(locked)

        await self._aretried(clear, mutates=True)

    async def asweep(self) -> int:
        """Async :meth:`sweep`."""

        async def sweep() -> int:
            st = await self._astatements()
            connections = self._aconnections()
            await connections.fetch(st.prune, {"keep": self._record_seconds()})
            return 0 if st.sweep is None else int((await connections.fetch(st.sweep, {}))[0][0])

        return await self._aretried(sweep, mutates=True)

    async def aclose(self) -> None:
        """Close this loop's connections and the sync ones; reconnects if used again."""
        with self._lock:
            sync, self._sync = self._sync, None
            async_, self._async = self._async, None
        if sync is not None:
            sync.close()
        if async_ is not None:
            await async_.aclose()


@functools.lru_cache(maxsize=32)
def _policy(retries: int, backoff: float, deadline: float) -> RetryPolicy:
    """The retry policy of these settings, made once (every call of a store needs it)."""
    return RetryPolicy(retries, backoff, deadline)


def _replayed(found: list[Row]) -> list[Row]:
    """The reply a change recorded with its operation id: the rows a removal returned."""
    reply = found[0][0]
    return [] if reply is None else [(int(p), m) for p, m in json.loads(reply)]


def _stale(rows: list[Row]) -> bool:
    """Whether a removal reported a stale snapshot (and changed nothing): one NULL row."""
    return len(rows) == 1 and rows[0][0] is None


def _acted(rows: list[Row]) -> list[Row]:
    """The removed rows, without a stale run's report (a lock-only run's, when pipelined)."""
    return [row for row in rows if row[0] is not None]


def _ddl_race(exc: BaseException) -> bool:
    """Whether a DDL error is another session creating the same objects first."""
    cause: BaseException | None = exc
    while cause is not None:
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if state in _DDL_RACE_STATES:
            return True
        cause = cause.__cause__ or getattr(cause, "orig", None)
    return False
