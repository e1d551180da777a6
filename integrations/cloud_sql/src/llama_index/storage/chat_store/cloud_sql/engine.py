"""PostgresEngine: connections to a Cloud SQL for PostgreSQL instance."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.storage.chat_store.postgres import GoogleConnectorEngine
from llama_index.storage.chat_store.postgres.google import google_connector

__all__ = ["PostgresEngine"]

_INSTALL = "pip install 'llama-index-storage-chat-store-cloud-sql[connector]'"


def _default_connector(quota_project: str | None = None) -> Any:
    return google_connector("google.cloud.sql.connector", "Connector", _INSTALL)(
        quota_project=quota_project
    )


def _default_async_connector(quota_project: str | None = None) -> Any:
    # Cloud SQL's connector runs its async work on the loop it is given.
    return google_connector("google.cloud.sql.connector", "Connector", _INSTALL)(
        loop=asyncio.get_running_loop(), quota_project=quota_project
    )


class PostgresEngine(GoogleConnectorEngine):
    """Connections to a Cloud SQL for PostgreSQL database for :class:`PostgresChatStore`.

    Build it with :meth:`from_instance` (Google's Cloud SQL connector: IAM or password auth,
    TLS), :meth:`from_engine_args` / :meth:`from_engine` (a plain PostgreSQL URL), or
    :meth:`from_url` (``cloudsql://PROJECT/REGION/INSTANCE/DATABASE``). Sync calls use
    pg8000 through ``connector.connect``, async calls asyncpg through
    ``connector.connect_async``; by default each event loop gets its own connector.

    ``connector_factory`` / ``async_connector_factory`` (called with ``quota_project=``) make
    the connectors used when none is passed, also by stores rebuilt with ``from_dict``.
    """

    scheme = "cloudsql"
    instance_parts = ("PROJECT", "REGION", "INSTANCE")
    connector_options = ("quota_project",)
    async_method = "connect_async"
    connector_factory = staticmethod(_default_connector)
    async_connector_factory = staticmethod(_default_async_connector)

    @classmethod
    def instance_name(cls, *parts: str) -> str:
        """Return Cloud SQL's connection name ``PROJECT:REGION:INSTANCE``."""
        return ":".join(parts)

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

        Args:
            project_id: Google Cloud project.
            region: The instance's region.
            instance: Cloud SQL instance name.
            database: Database name.
            user: Database user; see :meth:`GoogleConnectorEngine.from_parts` for it and
                the other arguments but ``quota_project``.
            password: Database password (with ``user``; neither: IAM authentication).
            ip_type: ``public``, ``private`` or ``psc``.
            quota_project: Project billed for the connector's API calls.
            iam_account_email: The IAM principal for IAM database authentication.
            connector: Sync connector (``connect(name, "pg8000", **kwargs)``).
            async_connector: Async connector (``await connect_async(name, "asyncpg", ...)``).
            engine_options: Extra ``create_engine`` arguments for the sync pool.

        Raises:
            ConfigurationError: The credentials do not say how to log in (see ``from_parts``).
        """
        return cls.from_parts(
            (project_id, region, instance), database,
            user=user, password=password, ip_type=ip_type, iam_account_email=iam_account_email,
            connector=connector, async_connector=async_connector, engine_options=engine_options,
            quota_project=quota_project,
        )  # fmt: skip

    @classmethod
    def from_engine_args(cls, url: str, **engine_options: Any) -> PostgresEngine:
        """Connect with a plain PostgreSQL URL (Google's name for ``from_connection_string``)."""
        return cls.from_connection_string(url, **engine_options)
