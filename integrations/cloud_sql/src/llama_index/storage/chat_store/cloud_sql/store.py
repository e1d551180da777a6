"""Cloud SQL's PostgresChatStore: the Postgres store over Google's chat store table."""

from __future__ import annotations

from llama_index.storage.chat_store.cloud_sql.engine import PostgresEngine
from llama_index.storage.chat_store.postgres import GoogleChatStore

__all__ = ["PostgresChatStore"]


class PostgresChatStore(GoogleChatStore):
    """Chat histories in Cloud SQL for PostgreSQL, in the table ``llama-index-cloud-sql-pg`` uses.

    One row per message, shared both ways with Google's package; no TTL (see
    :class:`GoogleChatStore` for the table and exactly-once changes).

    Build it with :meth:`create_sync` / :meth:`create` from a :class:`PostgresEngine`, or
    :meth:`from_url` (``cloudsql://PROJECT/REGION/INSTANCE/DATABASE?table=...``; ``user``,
    ``ip_type``, ``quota_project`` and ``iam_account_email`` in the query go to the engine).
    Its ``class_name`` is ``CloudSQLPostgresChatStore``, distinct from the Postgres store's.
    """

    engine_class = PostgresEngine

    @classmethod
    def class_name(cls) -> str:
        """Return ``CloudSQLPostgresChatStore``."""
        return "CloudSQLPostgresChatStore"
