"""AlloyDBEngine: connections to an AlloyDB instance, through Google's connector or a URL."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from llama_index.storage.chat_store.core import BackendImportError, ConfigurationError
from llama_index.storage.chat_store.postgres import ConnectorEngine

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["AlloyDBEngine"]

_INSTALL = "pip install 'llama-index-storage-chat-store-alloydb[connector]'"


def _default_connector() -> Any:
    try:
        from google.cloud.alloydb.connector import Connector
    except ImportError as exc:
        raise BackendImportError(
            f"AlloyDB's connector is not installed ({exc}); {_INSTALL}, or pass connector="
        ) from exc
    return Connector()


def _default_async_connector() -> Any:
    try:
        from google.cloud.alloydb.connector import AsyncConnector
    except ImportError as exc:
        raise BackendImportError(
            f"AlloyDB's connector is not installed ({exc}); {_INSTALL}, or pass async_connector="
        ) from exc
    return AsyncConnector()


class AlloyDBEngine(ConnectorEngine):
    """Connections to an AlloyDB database for :class:`AlloyDBChatStore`.

    Build it with :meth:`from_instance` (Google's connector: IAM or password auth, TLS),
    :meth:`from_connection_string` / :meth:`from_engine` (a plain PostgreSQL URL), or
    :meth:`from_url` (``alloydb://PROJECT/REGION/CLUSTER/INSTANCE/DATABASE``). Sync calls
    use pg8000 through the connector, async calls asyncpg; each event loop gets its own
    async connector (Google's is bound to the loop that created it).

    ``connector_factory`` / ``async_connector_factory`` make the connectors used when none
    is passed (also by stores rebuilt with ``from_dict`` or ``from_url``); replace them to
    configure Google's connectors or to connect elsewhere.
    """

    connector_factory: ClassVar[Callable[[], Any]] = staticmethod(_default_connector)
    async_connector_factory: ClassVar[Callable[[], Any]] = staticmethod(_default_async_connector)

    @classmethod
    def from_instance(
        cls,
        project_id: str,
        region: str,
        cluster: str,
        instance: str,
        database: str,
        user: str | None = None,
        password: str | None = None,
        ip_type: str = "public",
        iam_account_email: str | None = None,
        *,
        connector: Any = None,
        async_connector: Any = None,
        engine_options: dict[str, Any] | None = None,
    ) -> AlloyDBEngine:
        """Connect to an AlloyDB instance through Google's connector (never connects here).

        Without ``user`` and ``password``, IAM database authentication is used as
        ``iam_account_email``.

        Args:
            project_id: Google Cloud project.
            region: The cluster's region.
            cluster: AlloyDB cluster name.
            instance: AlloyDB instance name.
            database: Database name.
            user: Database user (with ``password``).
            password: Database password (with ``user``).
            ip_type: ``public``, ``private`` or ``psc``.
            iam_account_email: The IAM principal for IAM database authentication.
            connector: A sync connector (``connect(instance_uri, "pg8000", **kwargs)``);
                default: ``google.cloud.alloydb.connector.Connector()``.
            async_connector: An async connector (``await connect(uri, "asyncpg", ...)``);
                default: one ``AsyncConnector()`` per event loop.
            engine_options: Extra ``create_engine`` arguments for the sync pool.

        Raises:
            ConfigurationError: Only one of ``user`` / ``password``, or neither and no
                ``iam_account_email``.
        """
        if bool(user) != bool(password):
            raise ConfigurationError(
                "give both user and password, or neither (IAM authentication as iam_account_email)"
            )
        db_user = user or iam_account_email
        if not db_user:
            raise ConfigurationError("IAM authentication needs iam_account_email=")
        instance_uri = (
            f"projects/{project_id}/locations/{region}/clusters/{cluster}/instances/{instance}"
        )
        kwargs = {
            "user": db_user,
            "password": password,
            "db": database,
            "enable_iam_auth": not password,
            "ip_type": ip_type,
        }
        sync_lock = threading.Lock()
        sync_holder: list[Any] = [connector] if connector is not None else []

        def connect() -> Any:
            with sync_lock:
                if not sync_holder:
                    sync_holder.append(cls.connector_factory())
            return sync_holder[0].connect(instance_uri, "pg8000", **kwargs)

        per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

        async def aconnect() -> Any:
            chosen = async_connector
            if chosen is None:
                loop = asyncio.get_running_loop()
                chosen = per_loop.get(loop)
                if chosen is None:
                    chosen = per_loop[loop] = cls.async_connector_factory()
            return await chosen.connect(instance_uri, "asyncpg", **kwargs)

        query = {"user": db_user, "ip_type": ip_type}
        url = (
            f"alloydb://{quote(project_id, safe='')}/{quote(region, safe='')}/"
            f"{quote(cluster, safe='')}/{quote(instance, safe='')}/"
            f"{quote(database, safe='')}?{urlencode(query)}"
        )
        return cls(
            url,
            password=password,
            connect=connect,
            aconnect=aconnect,
            sync_driver="postgresql+pg8000",
            engine_options=engine_options,
        )

    @classmethod
    async def afrom_instance(cls, *args: Any, **kwargs: Any) -> AlloyDBEngine:
        """Async twin of :meth:`from_instance` (it does no I/O either)."""
        return cls.from_instance(*args, **kwargs)

    @classmethod
    def from_url(cls, url: str, password: str | None = None, **options: Any) -> AlloyDBEngine:
        """Build from ``alloydb://PROJECT/REGION/CLUSTER/INSTANCE/DATABASE?user=...``.

        Query options ``user``, ``password``, ``ip_type`` and ``iam_account_email`` are
        :meth:`from_instance` arguments; others are ignored (store options).

        Raises:
            ConfigurationError: The URL does not name all five parts.
        """
        parts = urlsplit(url)
        path = [unquote(p) for p in [parts.netloc, *parts.path.strip("/").split("/")] if p]
        if parts.scheme != "alloydb" or len(path) != 5:
            raise ConfigurationError(
                "expected alloydb://PROJECT/REGION/CLUSTER/INSTANCE/DATABASE, "
                f"got {parts.scheme}://..."
            )
        query = dict(parse_qsl(parts.query))
        project, region, cluster, instance, database = path
        return cls.from_instance(
            project, region, cluster, instance, database,
            user=query.get("user"),
            password=password or query.get("password"),
            ip_type=query.get("ip_type", "public"),
            iam_account_email=query.get("iam_account_email"),
            **options,
        )  # fmt: skip

    @classmethod
    def from_connection_string(cls, url: str, **engine_options: Any) -> AlloyDBEngine:
        """Connect with a plain PostgreSQL URL (``postgresql+asyncpg://user:pw@host/db``)."""
        parts = urlsplit(url)
        password = unquote(parts.password) if parts.password is not None else None
        if password is not None:  # the URL is shown in errors and dumps: keep it secret-free
            parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", "@", 1))
        return cls(urlunsplit(parts), password=password, engine_options=engine_options)

    @classmethod
    def from_engine(cls, engine: AsyncEngine | Engine, **_: Any) -> AlloyDBEngine:
        """Connect to the database of a SQLAlchemy engine (its URL and credentials)."""
        return cls.from_connection_string(engine.url.render_as_string(hide_password=False))

    def init_chat_store_table(
        self, table_name: str, schema_name: str = "public", overwrite_existing: bool = False
    ) -> None:
        """Create Google's chat store table (idempotent; ``overwrite_existing`` drops it)."""
        from llama_index.storage.chat_store.alloydb.store import AlloyDBChatStore

        with AlloyDBChatStore.from_engine(
            self, table_name=table_name, schema_name=schema_name
        ) as store:
            store.init_table(overwrite_existing=overwrite_existing)

    async def ainit_chat_store_table(
        self, table_name: str, schema_name: str = "public", overwrite_existing: bool = False
    ) -> None:
        """Async :meth:`init_chat_store_table`."""
        from llama_index.storage.chat_store.alloydb.store import AlloyDBChatStore

        async with AlloyDBChatStore.from_engine(
            self, table_name=table_name, schema_name=schema_name
        ) as store:
            await store.ainit_table(overwrite_existing=overwrite_existing)
