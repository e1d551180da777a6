"""ConnectorEngine: how a PostgresChatStore opens connections when a URL is not enough.

Cloud connectors (AlloyDB, Cloud SQL), IAM tokens or proxies open connections
themselves. A ``ConnectorEngine`` holds two callables, one opening a sync DBAPI
connection (pg8000 by default, the driver Google's connectors offer) and one opening an
asyncpg connection, plus a URL that names the database in errors and dumps (never a
secret). Without callables it is just a ``postgresql://`` URL and its password.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine, create_engine

from llama_index.storage.chat_store.core import ConfigurationError
from llama_index.storage.chat_store.core.backend import split_password

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from typing_extensions import Self

__all__ = ["ConnectorEngine", "split_password"]


class ConnectorEngine:
    """Connections for a Postgres-family store, opened by a URL or by callables.

    Args:
        url: A ``postgresql://`` URL (used to connect when no callables are given), or a URL
            naming the database for messages and dumps (``alloydb://...``).
        password: The password for ``url`` connections.
        connect: Opens one sync DBAPI connection of ``sync_driver``'s kind.
        aconnect: Opens one asyncpg connection (called on the event loop that uses it).
        sync_driver: SQLAlchemy dialect of ``connect``'s connections.
        engine_options: Extra ``create_engine`` arguments (pool size, ...).
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        connect: Callable[[], Any] | None = None,
        aconnect: Callable[[], Awaitable[Any]] | None = None,
        sync_driver: str = "postgresql+pg8000",
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.password = password
        self._connect = connect
        self._aconnect = aconnect
        self.sync_driver = sync_driver
        self.engine_options = dict(engine_options or {})

    @classmethod
    def from_url(cls, url: str, password: str | None = None, **options: Any) -> Self:
        """Build an engine from a URL of this engine's kind (here: a ``postgresql://`` URL)."""
        return cls(url, password=password, **options)

    @classmethod
    def from_connection_string(cls, url: str, **engine_options: Any) -> Self:
        """Connect with a plain PostgreSQL URL (``postgresql+asyncpg://user:pw@host/db``).

        The password (in the user info or the query) moves out of the URL, which is shown
        in errors and dumps.
        """
        plain, password = split_password(url)
        return cls(plain, password=password, engine_options=engine_options)

    @classmethod
    def from_engine(cls, engine: AsyncEngine | Engine, **_: Any) -> Self:
        """Connect to the database of a SQLAlchemy engine (its URL and credentials)."""
        return cls.from_connection_string(engine.url.render_as_string(hide_password=False))

    @property
    def uses_connector(self) -> bool:
        """Whether connections come from the callables rather than from ``url``."""
        return self._connect is not None or self._aconnect is not None

    def sync_engine(self) -> Engine:
        """Return a new SQLAlchemy engine whose connections come from ``connect``.

        Raises:
            ConfigurationError: No sync callable was given.
        """
        connect = self._connect
        if connect is None:
            raise ConfigurationError(
                f"{self.url}: this engine has no sync connector; use the async (a*) methods"
            )
        return create_engine(f"{self.sync_driver}://", creator=connect, **self.engine_options)

    async def aconnect(self) -> Any:
        """Open one asyncpg connection.

        Raises:
            ConfigurationError: No async callable was given.
        """
        if self._aconnect is None:
            raise ConfigurationError(
                f"{self.url}: this engine has no async connector; use the sync methods"
            )
        return await self._aconnect()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
