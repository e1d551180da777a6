"""Cloud SQL's PostgresChatStore: the Postgres store over Google's chat store table."""

from __future__ import annotations

from typing import Any, ClassVar

from llama_index.storage.chat_store.cloud_sql.engine import PostgresEngine
from llama_index.storage.chat_store.postgres import ConnectorEngine
from llama_index.storage.chat_store.postgres import PostgresChatStore as _PostgresChatStore
from llama_index.storage.chat_store.postgres.store import LayoutOption

__all__ = ["PostgresChatStore"]


class PostgresChatStore(_PostgresChatStore):
    """Chat histories in Cloud SQL for PostgreSQL, in the table ``llama-index-cloud-sql-pg`` uses.

    One row per message (``id SERIAL, key VARCHAR, message JSON``, index
    ``"<table>_idx_key"``): tables created by Google's package work here and the other
    way round, and Google's writers may share them, so there are no bookkeeping rows and
    no TTL. Appends, pops and windows are single statements like the Postgres store's.
    Changes record their operation ids in a table of their own, ``<table>_ops``, so a change
    retried after a lost connection applies once (see :class:`PostgresChatStore`).

    Build it with :meth:`create_sync` / :meth:`create` from a :class:`PostgresEngine`, or
    :meth:`from_url` (``cloudsql://PROJECT/REGION/INSTANCE/DATABASE?table=...``; ``user``,
    ``ip_type``, ``quota_project`` and ``iam_account_email`` in the query go to the engine).
    Its ``class_name`` is ``CloudSQLPostgresChatStore``, distinct from the Postgres store's.
    """

    layout: LayoutOption = "google"

    _default_layout: ClassVar[Any] = "google"
    _url_schemes: ClassVar[tuple[str, ...]] = ("cloudsql",)
    _engine_class: ClassVar[type[ConnectorEngine] | None] = PostgresEngine

    @classmethod
    def class_name(cls) -> str:
        """Return ``CloudSQLPostgresChatStore``."""
        return "CloudSQLPostgresChatStore"
