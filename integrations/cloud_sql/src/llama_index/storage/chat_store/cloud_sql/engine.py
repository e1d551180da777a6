"""PostgresEngine: connections to a Cloud SQL for PostgreSQL instance."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from llama_index.storage.chat_store.core import BackendImportError, ConfigurationError
from llama_index.storage.chat_store.postgres import ConnectorEngine, connector_login

if TYPE_CHECKING:
    from llama_index.storage.chat_store.cloud_sql.store import PostgresChatStore

__all__ = ["PostgresEngine"]

_INSTALL = "pip install 'llama-index-storage-chat-store-cloud-sql[connector]'"


def _connector_class() -> Any:
    try:
        from google.cloud.sql.connector import Connector
    except ImportError as exc:
        raise BackendImportError(
            f"the Cloud SQL connector is not installed ({exc}); {_INSTALL}, or pass connector="
        ) from exc
    return Connector


def _default_connector(quota_project: str | None) -> Any:
    return _connector_class()(quota_project=quota_project)


def _default_async_connector(quota_project: str | None) -> Any:
    # Cloud SQL's connector runs its async work on the loop it is given.
    return _connector_class()(loop=asyncio.get_running_loop(), quota_project=quota_project)


class PostgresEngine(ConnectorEngine):
    """Connections to a Cloud SQL for PostgreSQL database for :class:`PostgresChatStore`.

    Build it with :meth:`from_instance` (Google's Cloud SQL connector: IAM or password auth,
    TLS), :meth:`from_engine_args` / :meth:`from_engine` (a plain PostgreSQL URL), or
    :meth:`from_url` (``cloudsql://PROJECT/REGION/INSTANCE/DATABASE``). Sync calls use
    pg8000 through ``connector.connect``, async calls asyncpg through
    ``connector.connect_async``; by default each event loop gets its own connector.

    ``connector_factory`` / ``async_connector_factory`` (called with ``quota_project``) make
    the connectors used when none is passed, also by stores rebuilt with ``from_dict``.
    """

    connector_factory: ClassVar[Callable[[str | None], Any]] = staticmethod(_default_connector)
    async_connector_factory: ClassVar[Callable[[str | None], Any]] = staticmethod(
        _default_async_connector
    )

    @classmethod
    def from_instance(
        cls,
        project_id: str,
        region: str,
        instance: str,
        database: str,
        user: str | None = None,
        password: str | None = None,
        ip_type: str = "public",
        quota_project: str | None = None,
        iam_account_email: str | None = None,
        *,
        connector: Any = None,
        async_connector: Any = None,
        engine_options: dict[str, Any] | None = None,
    ) -> PostgresEngine:
        """Connect to a Cloud SQL instance through Google's connector (never connects here).

        Without ``user`` and ``password``, IAM database authentication is used as
        ``iam_account_email``.

        Args:
            project_id: Google Cloud project.
            region: The instance's region.
            instance: Cloud SQL instance name.
            database: Database name.
            user: Database user (with ``password``).
            password: Database password (with ``user``).
            ip_type: ``public``, ``private`` or ``psc``.
            quota_project: Project billed for the connector's API calls.
            iam_account_email: The IAM principal for IAM database authentication.
            connector: Sync connector (``connect(name, "pg8000", **kwargs)``).
            async_connector: Async connector (``await connect_async(name, "asyncpg", ...)``).
            engine_options: Extra ``create_engine`` arguments for the sync pool.

        Raises:
            ConfigurationError: Only one of ``user`` / ``password``, or neither and no
                ``iam_account_email``.
        """
        db_user = connector_login(user, password, iam_account_email)
        name = f"{project_id}:{region}:{instance}"
        kwargs = {
            "user": db_user,
            "password": password,
            "db": database,
            "enable_iam_auth": not password,
            "ip_type": ip_type,
        }
        query = {"user": db_user, "ip_type": ip_type}
        if quota_project:
            query["quota_project"] = quota_project
        url = (
            f"cloudsql://{quote(project_id, safe='')}/{quote(region, safe='')}/"
            f"{quote(instance, safe='')}/{quote(database, safe='')}?{urlencode(query)}"
        )
        return cls.from_connectors(
            url,
            password=password,
            open_sync=lambda c: c.connect(name, "pg8000", **kwargs),
            open_async=lambda c: c.connect_async(name, "asyncpg", **kwargs),
            make_connector=lambda: cls.connector_factory(quota_project),
            make_async_connector=lambda: cls.async_connector_factory(quota_project),
            connector=connector,
            async_connector=async_connector,
            engine_options=engine_options,
        )

    @classmethod
    async def afrom_instance(cls, *args: Any, **kwargs: Any) -> PostgresEngine:
        """Async twin of :meth:`from_instance` (it does no I/O either)."""
        return cls.from_instance(*args, **kwargs)

    @classmethod
    def from_url(cls, url: str, password: str | None = None, **options: Any) -> PostgresEngine:
        """Build from ``cloudsql://PROJECT/REGION/INSTANCE/DATABASE?user=...``.

        Query options ``user``, ``password``, ``ip_type``, ``quota_project`` and
        ``iam_account_email`` are :meth:`from_instance` arguments; others are ignored.

        Raises:
            ConfigurationError: The URL does not name all four parts.
        """
        parts = urlsplit(url)
        path = [unquote(p) for p in [parts.netloc, *parts.path.strip("/").split("/")] if p]
        if parts.scheme != "cloudsql" or len(path) != 4:
            raise ConfigurationError(
                f"expected cloudsql://PROJECT/REGION/INSTANCE/DATABASE, got {parts.scheme}://..."
            )
        query = dict(parse_qsl(parts.query))
        project, region, instance, database = path
        return cls.from_instance(
            project, region, instance, database,
            user=query.get("user"),
            password=password or query.get("password"),
            ip_type=query.get("ip_type", "public"),
            quota_project=query.get("quota_project"),
            iam_account_email=query.get("iam_account_email"),
            **options,
        )  # fmt: skip

    @classmethod
    def from_engine_args(cls, url: str, **engine_options: Any) -> PostgresEngine:
        """Connect with a plain PostgreSQL URL (Google's name for ``from_connection_string``)."""
        return cls.from_connection_string(url, **engine_options)

    @classmethod
    def chat_store_class(cls) -> type[PostgresChatStore]:
        """The store class :meth:`init_chat_store_table` creates Google's table for."""
        from llama_index.storage.chat_store.cloud_sql.store import PostgresChatStore

        return PostgresChatStore
