"""YugabyteDBChatStore: the Postgres store through YugabyteDB's smart driver."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode

from llama_index.storage.chat_store.postgres import PostgresChatStore

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["YugabyteDBChatStore"]

_SMART_DRIVER_OPTIONS = frozenset(
    {
        "load_balance",
        "topology_keys",
        "yb_servers_refresh_interval",
        "fallback_to_topology_keys_only",
        "failed_host_ttl_seconds",
    }
)


class YugabyteDBChatStore(PostgresChatStore):
    """Chat histories in YugabyteDB: the Postgres store's layouts and statements.

    Sync calls go through the smart driver (``psycopg2-yugabytedb`` with the
    ``sqlalchemy-yugabytedb`` dialect), so ``load_balance``, ``topology_keys`` and the
    other smart-driver options of the URL spread connections over the cluster's nodes.
    Async calls use asyncpg to the host in the URL (no load balancing).

    Schema creation uses only portable DDL and no advisory lock (missing before YugabyteDB
    2.25): ``IF NOT EXISTS``, and a lost creation race is retried once. LlamaIndex's own
    ``YugabyteDBChatStore`` table (``data_<table>``) is detected and used in place.
    YugabyteDB has no ``ctid``, so a removal cannot check its own snapshot: it runs after
    the conversation's lock, in a transaction. Changes record their operation ids in
    ``<table>_ops`` and lost connections are retried as in :class:`PostgresChatStore`, so a
    change applies once; the smart driver never resends a statement on its own.

    LlamaIndex's constructor ``YugabyteDBChatStore(session, table_name, schema_name,
    use_jsonb)`` works too (``session``: a ``sessionmaker`` bound to a
    ``yugabytedb+psycopg2://`` engine, which then serves the sync calls); ``async_session=``
    is accepted as a keyword, as on :class:`PostgresChatStore`.
    """

    _sync_driver: ClassVar[str] = "yugabytedb+psycopg2"
    _ddl_advisory_lock: ClassVar[bool] = False
    _row_versions: ClassVar[bool] = False  # no ctid: removals run after the lock
    _llama_index_prefix: ClassVar[str] = "data_"
    _sync_only_options: ClassVar[frozenset[str]] = _SMART_DRIVER_OPTIONS
    _url_schemes: ClassVar[tuple[str, ...]] = ("yugabytedb", "yugabytedb+psycopg2")

    def __init__(
        self,
        session: Any = None,
        table_name: str | None = None,
        schema_name: str | None = None,
        use_jsonb: bool | None = None,
        *,
        async_session: Any = None,
        **data: Any,
    ) -> None:
        """Configure the store; never connects. LlamaIndex's signature, positional order included.

        Args:
            session: A SQLAlchemy ``sessionmaker`` bound to a sync engine (or the engine).
            table_name: The messages table.
            schema_name: Schema of every table, created if missing.
            use_jsonb: Element type when this store creates a ``llama_index`` table.
            async_session: A sessionmaker bound to an ``AsyncEngine`` (only its URL is used).
            **data: The other fields (see :class:`PostgresChatStore`).

        Raises:
            TypeError: ``session`` is not a sessionmaker or engine.
            ValueError: An argument the store does not know (named in the message).
        """
        super().__init__(session, async_session, table_name, schema_name, use_jsonb, **data)

    @classmethod
    def class_name(cls) -> str:
        """Return ``YugabyteDBChatStore``."""
        return "YugabyteDBChatStore"

    @classmethod
    def _canonical_scheme(cls) -> str:
        return "yugabytedb"

    @classmethod
    def from_params(  # type: ignore[override]
        cls,
        host: str | None = None,
        port: str | int | None = 5433,
        database: str | None = None,
        user: str | None = None,
        password: str | None = None,
        load_balance: bool = False,
        topology_keys: str | None = None,
        yb_servers_refresh_interval: int = 300,
        fallback_to_topology_keys_only: bool = False,
        failed_host_ttl_seconds: int = 5,
        table_name: str = "chatstore",
        schema_name: str = "public",
        connection_string: str | None = None,
        debug: bool = False,
        use_jsonb: bool = False,
        **options: Any,
    ) -> Self:
        """Build a store from connection and smart-driver parameters (LlamaIndex's signature).

        ``connection_string`` (a ``yugabytedb+psycopg2://`` URL) replaces the connection and
        smart-driver parameters; ``debug`` echoes the sync engine's SQL.
        """
        if connection_string is not None:
            return cls.from_uri(
                connection_string, table_name, schema_name, debug, use_jsonb, **options
            )
        query: dict[str, str] = {"load_balance": str(load_balance).lower()}
        if topology_keys is not None:
            query["topology_keys"] = topology_keys
        query["yb_servers_refresh_interval"] = str(yb_servers_refresh_interval)
        if fallback_to_topology_keys_only:
            query["fallback_to_topology_keys_only"] = "true"
        query["failed_host_ttl_seconds"] = str(failed_host_ttl_seconds)
        url = cls._params_url(host, port, database, user, urlencode(query))
        return cls.from_uri(
            url, table_name, schema_name, debug, use_jsonb, password=password, **options
        )
