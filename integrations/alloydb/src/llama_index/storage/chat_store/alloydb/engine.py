"""AlloyDBEngine: connections to an AlloyDB instance, through Google's connector or a URL."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from llama_index.storage.chat_store.core import BackendImportError, ConfigurationError
from llama_index.storage.chat_store.postgres import ConnectorEngine, connector_login

if TYPE_CHECKING:
    from llama_index.storage.chat_store.alloydb.store import AlloyDBChatStore

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
        db_user = connector_login(user, password, iam_account_email)
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
        query = {"user": db_user, "ip_type": ip_type}
        url = (
            f"alloydb://{quote(project_id, safe='')}/{quote(region, safe='')}/"
            f"{quote(cluster, safe='')}/{quote(instance, safe='')}/"
            f"{quote(database, safe='')}?{urlencode(query)}"
        )
        return cls.from_connectors(
            url,
            password=password,
            open_sync=lambda c: c.connect(instance_uri, "pg8000", **kwargs),
            open_async=lambda c: c.connect(instance_uri, "asyncpg", **kwargs),
            make_connector=cls.connector_factory,
            make_async_connector=cls.async_connector_factory,
            connector=connector,
            async_connector=async_connector,
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
    def chat_store_class(cls) -> type[AlloyDBChatStore]:
        """The store class :meth:`init_chat_store_table` creates Google's table for."""
        from llama_index.storage.chat_store.alloydb.store import AlloyDBChatStore

        return AlloyDBChatStore
