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

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest


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


def local_instance(postgres_url: str) -> tuple[str, int, str]:
    """``(host, port, database)`` of the session's PostgreSQL, for the local connectors."""
    parts = urlsplit(postgres_url)
    return str(parts.hostname), int(parts.port or 5432), parts.path.lstrip("/")


@pytest.fixture
def google_cloud_table(postgres_url: str) -> Iterator[str]:
    """A table name no other test uses in the session's PostgreSQL; dropped afterwards."""
    import pg8000.dbapi

    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    host, port, database = local_instance(postgres_url)
    parts = urlsplit(postgres_url)
    raw = pg8000.dbapi.connect(
        user=parts.username or "postgres", password=parts.password, host=host, port=port,
        database=database,
    )  # fmt: skip
    try:
        raw.cursor().execute(f'DROP TABLE IF EXISTS public."{name}"')
        raw.commit()
    finally:
        raw.close()
