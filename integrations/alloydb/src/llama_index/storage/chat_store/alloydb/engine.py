"""AlloyDBEngine: connections to an AlloyDB instance, through Google's connector or a URL."""

from __future__ import annotations

from typing import Any

from llama_index.storage.chat_store.postgres import GoogleConnectorEngine
from llama_index.storage.chat_store.postgres.google import google_connector

__all__ = ["AlloyDBEngine"]

_MODULE = "google.cloud.alloydb.connector"
_INSTALL = "pip install 'llama-index-storage-chat-store-alloydb[connector]'"


def _default_connector() -> Any:
    return google_connector(_MODULE, "Connector", _INSTALL)()


def _default_async_connector() -> Any:
    return google_connector(_MODULE, "AsyncConnector", _INSTALL)()


class AlloyDBEngine(GoogleConnectorEngine):
    """Connections to an AlloyDB database for :class:`AlloyDBChatStore`.

    Build it with :meth:`from_instance` (Google's connector: IAM or password auth, TLS),
    :meth:`from_connection_string` / :meth:`from_engine` (a plain PostgreSQL URL), or
    :meth:`from_url` (``alloydb://PROJECT/REGION/CLUSTER/INSTANCE/DATABASE``). Sync calls
    use pg8000 through the connector, async calls asyncpg; each event loop gets its own
    async connector (Google's is bound to the loop that created it).

    ``connector_factory`` / ``async_connector_factory`` (called without arguments) make the
    connectors used when none is passed (also by stores rebuilt with ``from_dict`` or
    ``from_url``); replace them to configure Google's connectors or to connect elsewhere.
    """

    scheme = "alloydb"
    instance_parts = ("PROJECT", "REGION", "CLUSTER", "INSTANCE")
    connector_factory = staticmethod(_default_connector)
    async_connector_factory = staticmethod(_default_async_connector)

    @classmethod
    def instance_name(cls, *parts: str) -> str:
        """Return AlloyDB's instance URI ``projects/P/locations/R/clusters/C/instances/I``."""
        project, region, cluster, instance = parts
        return f"projects/{project}/locations/{region}/clusters/{cluster}/instances/{instance}"

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

        Args:
            project_id: Google Cloud project.
            region: The cluster's region.
            cluster: AlloyDB cluster name.
            instance: AlloyDB instance name.
            database: Database name.
            user: Database user; see :meth:`GoogleConnectorEngine.from_parts` for it and
                ``password``, ``ip_type``, ``iam_account_email`` and ``engine_options``.
            password: Database password (with ``user``; neither: IAM authentication).
            ip_type: ``public``, ``private`` or ``psc``.
            iam_account_email: The IAM principal for IAM database authentication.
            connector: A sync connector (``connect(instance_uri, "pg8000", **kwargs)``);
                default: ``google.cloud.alloydb.connector.Connector()``.
            async_connector: An async connector (``await connect(uri, "asyncpg", ...)``);
                default: one ``AsyncConnector()`` per event loop.
            engine_options: Extra ``create_engine`` arguments for the sync pool.

        Raises:
            ConfigurationError: The credentials do not say how to log in (see ``from_parts``).
        """
        return cls.from_parts(
            (project_id, region, cluster, instance), database,
            user=user, password=password, ip_type=ip_type, iam_account_email=iam_account_email,
            connector=connector, async_connector=async_connector, engine_options=engine_options,
        )  # fmt: skip
