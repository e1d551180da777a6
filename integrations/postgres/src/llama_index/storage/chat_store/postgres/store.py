"""PostgresChatStore: chat histories in PostgreSQL, one row per message.

One store class serves the whole Postgres family; YugabyteDB, AlloyDB and Cloud SQL
subclass it and change only how connections are made, which table layout is used and
whether schema changes take an advisory lock.

The class is built in layers, one module each: ``_config`` (fields, validation,
connections, the step executors), ``_tables`` (the table's layout found or created on first
use, table-wide calls), ``_calls`` (parameters, locks, removals and exactly-once changes),
and here the constructors and each operation's plan. The kit (``core.backend``) writes the
public sync and async methods once over those plans.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from sqlalchemy.engine import Engine, make_url

from llama_index.storage.chat_store.core import (
    Capability,
    ChatMessage,
    ConfigurationError,
    message_from_json,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import Change, Plan
from llama_index.storage.chat_store.core.catalog import (
    ConversationInfo,
    ConversationPage,
    merged_metadata,
)
from llama_index.storage.chat_store.postgres import _catalog
from llama_index.storage.chat_store.postgres._calls import _FAR, _Calls, _NeedsPosition
from llama_index.storage.chat_store.postgres._config import (
    _STORE_OPTIONS,
    LayoutOption,
    _bound_engine,
    _same_database,
)
from llama_index.storage.chat_store.postgres._drivers import Row
from llama_index.storage.chat_store.postgres._layouts import Statements
from llama_index.storage.chat_store.postgres._steps import Fetch, Transaction, run
from llama_index.storage.chat_store.postgres.engine import ConnectorEngine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from typing_extensions import Self

__all__ = ["LayoutOption", "PostgresChatStore"]


class PostgresChatStore(_Calls):
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
        if (
            connection_string is not None
            and async_connection_string is not None
            and not _same_database(make_url(connection_string), make_url(async_connection_string))
        ):
            raise ConfigurationError(
                "connection_string and async_connection_string name different databases"
            )
        uri = connection_string or async_connection_string
        if uri is not None:
            return cls.from_uri(uri, table_name, schema_name, debug, use_jsonb, **options)
        url = cls._params_url(host, port, database, user)
        return cls.from_uri(
            url, table_name, schema_name, debug, use_jsonb, password=password, **options
        )

    @classmethod
    def _params_url(
        cls,
        host: str | None,
        port: str | int | None,
        database: str | None,
        user: str | None,
        query: str = "",
    ) -> str:
        """This class's URL for ``from_params``' connection parameters (no password)."""
        netloc = f"{quote(user, safe='')}@" if user else ""
        netloc += host or "localhost"
        if port is not None:
            netloc += f":{port}"
        path = f"/{quote(database or '', safe='')}"
        return urlunsplit((cls._canonical_scheme(), netloc, path, query, ""))

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

    @classmethod
    def class_name(cls) -> str:
        """Return ``PostgresChatStore``."""
        return "PostgresChatStore"

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append ``message`` in one statement, or insert it at ``idx`` like ``list.insert``.

        ``idx`` is any integer, as ``list.insert`` takes it (``True`` is 1). An insert is one
        transaction holding the conversation's lock, so concurrent writers of the key see
        the conversation before or after it, never during.

        Raises:
            TypeError: ``idx`` is not an integer (as ``list.insert`` raises).
        """
        super().add_message(key, message, None if idx is None else operator.index(idx))

    async def aadd_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Async :meth:`add_message`."""
        await super().aadd_message(key, message, None if idx is None else operator.index(idx))

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove and return the message at ``idx`` (any integer, as ``list.pop`` takes it)."""
        return super().delete_message(key, operator.index(idx))

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Async :meth:`delete_message`."""
        return await super().adelete_message(key, operator.index(idx))

    def _get_plan(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        # One indexed statement; with refresh_on_read the same statement pushes a live
        # conversation's expiry to now + ttl (an expired one stays expired).
        if limit == 0:
            return []
        st = (self._resolved or (yield from self._table_plan())).statements
        rows = yield from run(Fetch(*self._window(st, key, offset, limit)))
        try:
            return self._parse(key, rows, st)
        except _NeedsPosition as bad:
            assert st.position_of is not None
            at = {"key": key, "id": bad.row_id}
            found = yield from run(Fetch(st.position_of, at))
            message_from_json(bad.data, key=key, position=int(found[0][0]))
            raise AssertionError("unreachable: the row did not parse") from None

    def _count_plan(self, key: str) -> Plan[int]:
        # With refresh_on_read the same statement pushes a live conversation's expiry.
        st = (self._resolved or (yield from self._table_plan())).statements
        return self._count((yield from run(Fetch(st.count, self._key_params(key)))))

    def _add_plan(
        self, key: str, messages: list[ChatMessage], idx: int | None, change: Change
    ) -> Plan[None]:
        if idx is not None:
            params = {**self._append_params(key, messages), "idx": max(min(idx, _FAR), -_FAR)}
            yield from self._once(change, params, self._inserter(idx))
        elif len(messages) == 1:
            one = {**self._key_params(key), "message": message_to_json(messages[0])}
            yield from self._once(change, one, self._append_one)
        else:
            yield from self._once(change, self._append_params(key, messages), self._append)

    def _set_plan(self, key: str, messages: list[ChatMessage], change: Change) -> Plan[None]:
        if not messages:
            remove = self._remover(operator.attrgetter("delete_all"))
            yield from self._once(change, self._key_params(key), remove)
            return

        def replace(st: Statements, params: dict[str, Any]) -> Plan[list[Row]]:
            return self._locked(st, st.replace, params, st.lock_for_replace)

        yield from self._once(change, self._append_params(key, messages), replace)

    def _delete_all_plan(self, key: str, change: Change) -> Plan[list[ChatMessage] | None]:
        # Holds the conversation's lock: a message appended at the same time is either
        # returned (and removed) or stays, never left behind uncounted. An unreadable
        # removed message raises CorruptDataError; the conversation is removed all the same.
        remove = self._remover(operator.attrgetter("delete_all"))
        return self._removed(key, (yield from self._once(change, self._key_params(key), remove)))

    def _delete_at_plan(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        # Holds the conversation's lock, so the position is that of the conversation as
        # every write committed before left it; two callers never receive the same message.
        if not -_FAR <= idx < _FAR:  # no conversation has that position
            return None
        end = idx < 0
        params = {**self._key_params(key), "offset": -1 - idx if end else idx}
        which = "delete_from_end" if end else "delete_from_start"
        remove = self._remover(operator.attrgetter(which))
        removed = self._removed(key, (yield from self._once(change, params, remove)))
        return removed[0] if removed else None

    def _oldest_plan(
        self, key: str, n: int, change: Change, tool_safe: bool
    ) -> Plan[list[ChatMessage]]:
        params = {**self._key_params(key), "n": min(n, _FAR)}
        if tool_safe:
            remove = self._safe_trimmer(key, min(n, _FAR))
        else:
            remove = self._remover(operator.attrgetter("delete_oldest"))
        return self._removed(key, (yield from self._once(change, params, remove)))

    # -- the catalog (native layout; see ``_catalog``) ----------------------------------------

    def _catalog(self) -> Plan[_catalog.CatalogStatements]:
        if Capability.CATALOG not in self.capabilities:
            raise self._no_catalog()
        catalog = (self._resolved or (yield from self._table_plan())).catalog
        if catalog is None:  # ``auto`` found another layout
            raise self._no_catalog()
        return catalog

    def _catalog_plan(self, prefix: str, after: str | None, limit: int) -> Plan[ConversationPage]:
        # One statement reading a range of the byte-ordered key index: O(page).
        catalog = yield from self._catalog()
        rows = yield from run(Fetch(*_catalog.page_params(catalog, prefix, after, limit)))
        return _catalog.page_of(rows, limit)

    def _conversation_plan(self, key: str) -> Plan[ConversationInfo | None]:
        catalog = yield from self._catalog()
        rows = yield from run(Fetch(catalog.entry, {"key": key}))
        return _catalog.entry_of(rows[0]) if rows else None

    def _metadata_plan(
        self, key: str, changes: dict[str, str | None], change: Change
    ) -> Plan[ConversationInfo | None]:
        # One transaction holding the conversation's row lock, as every writer takes it: the
        # merge sees the metadata as the last writer left it, and a merge too large raises
        # before anything is written (the transaction rolls back).
        catalog = yield from self._catalog()
        params = {"key": key, "ttl": self._ttl()}

        def body() -> Plan[ConversationInfo | None]:
            held = yield Fetch(catalog.hold, params)
            if not held or int(held[0][0]) <= 0:
                return None
            merged = merged_metadata(_catalog.stored_metadata(held[0][1]), changes)
            stored = {**params, "metadata": _catalog.metadata_text(merged)}
            rows = yield Fetch(catalog.set_metadata, stored)
            return _catalog.entry_of(rows[0])

        return (yield from run(Transaction(body)))
