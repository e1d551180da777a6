"""AlloyDB and Cloud SQL for the tests: connectors that open connections to a local PostgreSQL.

Google's connectors (``google-cloud-alloydb-connector``, ``cloud-sql-python-connector``)
resolve an instance name to a TLS tunnel; the stores take the connector as an argument.
These classes have the same methods and arguments and open a plain connection to a local
server instead, so ``from_instance`` runs end to end. Each records every call, so a test
can check the instance name, driver and arguments the store passed. Picklable: worker
processes rebuild them from host and port.

The drivers (pg8000, asyncpg) are imported on use: the package under test brings them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LocalAsyncConnector", "LocalConnector"]


def _arguments(driver: str, expected: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    if driver != expected:
        raise ValueError(f"driver {driver!r} is not supported here; use {expected!r}")
    return {"user": kwargs["user"], "password": kwargs.get("password"), "database": kwargs["db"]}


@dataclass
class LocalConnector:
    """Sync ``connect(instance, "pg8000", **kwargs)`` like Google's ``Connector``.

    Also ``await connect_async(instance, "asyncpg", **kwargs)``, like Cloud SQL's.
    """

    host: str
    port: int
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def connect(self, instance: str, driver: str, **kwargs: Any) -> Any:
        """Open a pg8000 connection to the local server."""
        import pg8000.dbapi

        self.calls.append((instance, driver, kwargs))
        args = _arguments(driver, "pg8000", kwargs)
        return pg8000.dbapi.connect(host=self.host, port=self.port, **args)

    async def connect_async(self, instance: str, driver: str, **kwargs: Any) -> Any:
        """Open an asyncpg connection to the local server."""
        import asyncpg

        self.calls.append((instance, driver, kwargs))
        args = _arguments(driver, "asyncpg", kwargs)
        return await asyncpg.connect(host=self.host, port=self.port, **args)


@dataclass
class LocalAsyncConnector:
    """``await connect(instance, "asyncpg", **kwargs)`` like AlloyDB's ``AsyncConnector``."""

    host: str
    port: int
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    async def connect(self, instance: str, driver: str, **kwargs: Any) -> Any:
        """Open an asyncpg connection to the local server."""
        import asyncpg

        self.calls.append((instance, driver, kwargs))
        args = _arguments(driver, "asyncpg", kwargs)
        return await asyncpg.connect(host=self.host, port=self.port, **args)
