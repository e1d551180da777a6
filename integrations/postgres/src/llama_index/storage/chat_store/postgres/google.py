"""Google's connectors (AlloyDB, Cloud SQL): one engine and one store that they parameterize.

Google's ``llama-index-alloydb-pg`` and ``llama-index-cloud-sql-pg`` open connections
through a connector object (IAM or password auth, TLS tunnel) and keep chat histories in
one table layout (``id SERIAL, key VARCHAR, message JSON``). :class:`GoogleConnectorEngine`
is that engine written once: a subclass names its URL scheme, the parts of an instance
name, how the connector spells the name, and how its connectors are made.
:class:`GoogleChatStore` is the Postgres store over Google's table, built from such an
engine; a subclass names only its engine class (and its ``class_name``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from llama_index.storage.chat_store.core import BackendImportError, ConfigurationError
from llama_index.storage.chat_store.core.backend import Lazy, PerLoop
from llama_index.storage.chat_store.postgres._config import LayoutOption
from llama_index.storage.chat_store.postgres.engine import ConnectorEngine
from llama_index.storage.chat_store.postgres.store import PostgresChatStore

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["GoogleChatStore", "GoogleConnectorEngine", "connector_login", "google_connector"]


def connector_login(user: str | None, password: str | None, iam_account_email: str | None) -> str:
    """Return the database user for a cloud connector: password login, or IAM as an email.

    Raises:
        ConfigurationError: Only one of ``user`` / ``password``, or neither and no
            ``iam_account_email``.
    """
    if bool(user) != bool(password):
        raise ConfigurationError(
            "give both user and password, or neither (IAM authentication as iam_account_email)"
        )
    login = user or iam_account_email
    if not login:
        raise ConfigurationError("IAM authentication needs iam_account_email=")
    return login


def google_connector(module: str, name: str, install: str) -> Any:
    """Return the connector class ``name`` of Google's package ``module``.

    Raises:
        BackendImportError: The package is not installed (the message says to run
            ``install`` or to pass a connector).
    """
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise BackendImportError(
            f"Google's connector {module} is not installed ({exc}); {install}, "
            "or pass connector= and async_connector="
        ) from exc


class GoogleConnectorEngine(ConnectorEngine):
    """Connections to a database behind one of Google's connectors, or to a plain URL.

    Build it with ``from_instance`` (each subclass spells Google's signature),
    :meth:`from_connection_string` / :meth:`from_engine` (a plain PostgreSQL URL), or
    :meth:`from_url` (``<scheme>://PART/.../DATABASE?user=...``). Sync calls use pg8000
    through ``connector.connect``, async calls asyncpg through the async connector's
    :attr:`async_method`; by default each event loop gets its own async connector (Google's
    are bound to the loop that made them).

    ``connector_factory`` / ``async_connector_factory`` make the connectors used when none
    is passed (also by stores rebuilt with ``from_dict`` or ``from_url``), called with the
    subclass's :attr:`connector_options` as keywords; replace them to configure Google's
    connectors or to connect elsewhere.
    """

    scheme: ClassVar[str] = ""
    """The URL scheme naming an instance (``alloydb``)."""
    instance_parts: ClassVar[tuple[str, ...]] = ()
    """What names an instance, in order, as shown in errors (``PROJECT``, ``REGION``, ...)."""
    connector_options: ClassVar[tuple[str, ...]] = ()
    """Options of ``from_instance`` and of URLs that configure the connectors."""
    async_method: ClassVar[str] = "connect"
    """The async connector's method opening a connection (Cloud SQL: ``connect_async``)."""
    connector_factory: ClassVar[Callable[..., Any]]
    async_connector_factory: ClassVar[Callable[..., Any]]

    @classmethod
    def instance_name(cls, *parts: str) -> str:
        """Return the instance's name as the connector takes it, from :attr:`instance_parts`."""
        raise NotImplementedError(f"{cls.__name__} does not name instances")

    @classmethod
    def from_instance(cls, *args: Any, **kwargs: Any) -> Self:
        """Connect to an instance through Google's connector (each subclass's signature)."""
        raise NotImplementedError(f"{cls.__name__} has no from_instance")

    @classmethod
    async def afrom_instance(cls, *args: Any, **kwargs: Any) -> Self:
        """Async twin of ``from_instance`` (it does no I/O either)."""
        return cls.from_instance(*args, **kwargs)

    @classmethod
    def from_parts(
        cls,
        parts: tuple[str, ...],
        database: str,
        *,
        connector: Any = None,
        async_connector: Any = None,
        engine_options: dict[str, Any] | None = None,
        user: str | None = None,
        password: str | None = None,
        iam_account_email: str | None = None,
        ip_type: str = "public",
        **connector_options: str | None,
    ) -> Self:
        """Connect to the instance named by ``parts`` (what ``from_instance`` does).

        Without ``user`` and ``password``, IAM database authentication is used as
        ``iam_account_email``. Never connects here.

        Args:
            parts: The instance's :attr:`instance_parts`, in order.
            database: Database name.
            connector: A sync connector (``connect(name, "pg8000", **kwargs)``).
            async_connector: An async connector (``await <async_method>(name, "asyncpg",
                **kwargs)``), used on every event loop.
            engine_options: Extra ``create_engine`` arguments for the sync pool.
            user: Database user (with ``password``).
            password: Database password (with ``user``).
            iam_account_email: The IAM principal for IAM database authentication.
            ip_type: ``public``, ``private`` or ``psc``.
            **connector_options: Values of :attr:`connector_options`.

        Raises:
            ConfigurationError: Only one of ``user`` / ``password``, or neither and no
                ``iam_account_email``; or ``parts`` does not name an instance.
        """
        if len(parts) != len(cls.instance_parts):
            raise ConfigurationError(f"{cls.__name__} names instances by {cls.instance_parts}")
        db_user = connector_login(user, password, iam_account_email)
        name = cls.instance_name(*parts)
        kwargs = {
            "user": db_user,
            "password": password,
            "db": database,
            "enable_iam_auth": not password,
            "ip_type": ip_type,
        }
        query = {"user": db_user, "ip_type": ip_type}
        query.update({k: v for k, v in connector_options.items() if v})
        path = "/".join(quote(part, safe="") for part in (*parts, database))
        # Made on first use, when none is given; async ones per event loop (Google's are
        # bound to the loop that made them).
        sync_connector = Lazy(lambda: cls.connector_factory(**connector_options))
        async_connectors = PerLoop(lambda: cls.async_connector_factory(**connector_options))

        def connect() -> Any:
            chosen = connector if connector is not None else sync_connector.get()
            return chosen.connect(name, "pg8000", **kwargs)

        async def aconnect() -> Any:
            chosen = async_connector if async_connector is not None else async_connectors.get()
            return await getattr(chosen, cls.async_method)(name, "asyncpg", **kwargs)

        return cls(
            f"{cls.scheme}://{path}?{urlencode(query)}",
            password=password,
            connect=connect,
            aconnect=aconnect,
            engine_options=engine_options,
        )

    @classmethod
    def from_url(cls, url: str, password: str | None = None, **options: Any) -> Self:
        """Build from ``<scheme>://PART/.../DATABASE?user=...`` (see :attr:`instance_parts`).

        Query options ``user``, ``password``, ``ip_type``, ``iam_account_email`` and the
        :attr:`connector_options` are ``from_instance`` arguments; others are ignored
        (they are store options).

        Raises:
            ConfigurationError: The URL is not of :attr:`scheme` or does not name every part.
        """
        parts = urlsplit(url)
        path = [unquote(p) for p in [parts.netloc, *parts.path.strip("/").split("/")] if p]
        if parts.scheme != cls.scheme or len(path) != len(cls.instance_parts) + 1:
            shape = "/".join((*cls.instance_parts, "DATABASE"))
            raise ConfigurationError(f"expected {cls.scheme}://{shape}, got {parts.scheme}://...")
        query = dict(parse_qsl(parts.query))
        chosen: dict[str, Any] = {name: query.get(name) for name in cls.connector_options}
        return cls.from_parts(
            tuple(path[:-1]),
            path[-1],
            user=query.get("user"),
            password=password or query.get("password"),
            ip_type=query.get("ip_type", "public"),
            iam_account_email=query.get("iam_account_email"),
            **chosen,
            **options,
        )

    def init_chat_store_table(
        self, table_name: str, schema_name: str = "public", overwrite_existing: bool = False
    ) -> None:
        """Create Google's chat store table (idempotent; ``overwrite_existing`` drops it first)."""
        with GoogleChatStore.from_engine(
            self, table_name=table_name, schema_name=schema_name
        ) as store:
            store.init_table(overwrite_existing=overwrite_existing)

    async def ainit_chat_store_table(
        self, table_name: str, schema_name: str = "public", overwrite_existing: bool = False
    ) -> None:
        """Async :meth:`init_chat_store_table`."""
        async with GoogleChatStore.from_engine(
            self, table_name=table_name, schema_name=schema_name
        ) as store:
            await store.ainit_table(overwrite_existing=overwrite_existing)


class GoogleChatStore(PostgresChatStore):
    """Chat histories in the table Google's AlloyDB and Cloud SQL packages use.

    One row per message (``id SERIAL, key VARCHAR, message JSON``, index
    ``"<table>_idx_key"``): tables created by Google's packages work here and the other
    way round, and Google's writers may share them, so there are no bookkeeping rows and
    no TTL. Appends, pops and windows are single statements like the Postgres store's.
    Changes record their operation ids in a table of their own, ``<table>_ops``, so a change
    retried after a lost connection applies once (see :class:`PostgresChatStore`).

    A subclass sets :attr:`engine_class`: its URLs (``<engine scheme>://...?table=...``)
    and stores rebuilt from their dump connect through that engine. Build a store with
    :meth:`create_sync` / :meth:`create` from an engine, or ``from_url``.
    """

    layout: LayoutOption = "google"

    engine_class: ClassVar[type[GoogleConnectorEngine] | None] = None
    """The engine this store's URL scheme names (``None``: plain PostgreSQL URLs only)."""
    _default_layout: ClassVar[Any] = "google"

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.engine_class is not None:
            cls._engine_class = cls.engine_class
            cls._url_schemes = (cls.engine_class.scheme,)

    @classmethod
    def class_name(cls) -> str:
        """Return ``GoogleChatStore``."""
        return "GoogleChatStore"
