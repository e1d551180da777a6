"""AlloyDBChatStore: the Postgres store over Google's AlloyDB chat store table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from pydantic import model_validator

from llama_index.storage.chat_store.alloydb.engine import AlloyDBEngine
from llama_index.storage.chat_store.core import Capability, ConfigurationError
from llama_index.storage.chat_store.postgres import ConnectorEngine, PostgresChatStore
from llama_index.storage.chat_store.postgres.store import LayoutOption

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AlloyDBChatStore"]


class AlloyDBChatStore(PostgresChatStore):
    """Chat histories in AlloyDB, in the table ``llama-index-alloydb-pg`` uses.

    One row per message (``id SERIAL, key VARCHAR, message JSON``, index
    ``"<table>_idx_key"``): tables created by Google's package work here and the other
    way round, and Google's writers may share them, so there are no bookkeeping rows and
    no TTL. Appends, pops and windows are single statements like the Postgres store's.

    Build it with :meth:`create_sync` / :meth:`create` from an :class:`AlloyDBEngine`, or
    :meth:`from_url` (``alloydb://PROJECT/REGION/CLUSTER/INSTANCE/DATABASE?table=...``).
    """

    layout: LayoutOption = "google"

    _default_layout: ClassVar[Any] = "google"
    _url_schemes: ClassVar[tuple[str, ...]] = ("alloydb",)
    _engine_class: ClassVar[type[AlloyDBEngine]] = AlloyDBEngine

    @model_validator(mode="after")
    def _no_ttl(self) -> Self:
        if self.ttl is not None:
            raise ConfigurationError(
                "Google's table layout has no expiry column: ttl is not supported"
            )
        return self

    @classmethod
    def class_name(cls) -> str:
        """Return ``AlloyDBChatStore``."""
        return "AlloyDBChatStore"

    @property
    def capabilities(self) -> frozenset[Capability]:
        """PERSISTENT, SHARED, NATIVE_ASYNC (no TTL in Google's layout)."""
        return frozenset({Capability.PERSISTENT, Capability.SHARED, Capability.NATIVE_ASYNC})

    @classmethod
    def create_sync(
        cls, engine: ConnectorEngine, table_name: str, schema_name: str = "public"
    ) -> Self:
        """Open the chat store table (created if missing) and return the store."""
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
    def from_uri(cls, uri: str, **options: Any) -> Self:
        """Build a store from an ``alloydb://`` URL (see :meth:`AlloyDBEngine.from_url`).

        Query options ``table`` and ``schema`` name the table; ``user``, ``ip_type`` and
        ``iam_account_email`` go to the engine. ``password=`` may be passed as an option.
        """
        parts = urlsplit(uri)
        if parts.scheme not in cls._url_schemes:
            raise ConfigurationError(f"{cls.__name__} takes alloydb:// URLs, got {parts.scheme}://")
        query = dict(parse_qsl(parts.query))
        password = options.pop("password", None)
        engine_args = {k: options.pop(k) for k in ("connector", "async_connector") if k in options}
        engine = cls._engine_class.from_url(uri, password=password, **engine_args)
        fields = {
            "table_name": query.get("table", "chatstore"),
            "schema_name": query.get("schema", "public"),
        }
        return cls.from_engine(engine, **{**fields, **options})

    def _connector_engine(self) -> ConnectorEngine | None:
        # A store rebuilt from its dump (from_dict) reconnects through its alloydb:// URL.
        if self._connector is None and urlsplit(self.connection_string).scheme == "alloydb":
            password = self.password.get_secret_value() if self.password else None
            self._connector = self._engine_class.from_url(self.connection_string, password=password)
        return self._connector
