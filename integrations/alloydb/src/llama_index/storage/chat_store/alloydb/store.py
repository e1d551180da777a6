"""AlloyDBChatStore: the Postgres store over Google's AlloyDB chat store table."""

from __future__ import annotations

from llama_index.storage.chat_store.alloydb.engine import AlloyDBEngine
from llama_index.storage.chat_store.postgres import GoogleChatStore

__all__ = ["AlloyDBChatStore"]


class AlloyDBChatStore(GoogleChatStore):
    """Chat histories in AlloyDB, in the table ``llama-index-alloydb-pg`` uses.

    One row per message, shared both ways with Google's package; no TTL (see
    :class:`GoogleChatStore` for the table and exactly-once changes).

    Build it with :meth:`create_sync` / :meth:`create` from an :class:`AlloyDBEngine`, or
    :meth:`from_url` (``alloydb://PROJECT/REGION/CLUSTER/INSTANCE/DATABASE?table=...``;
    ``user``, ``ip_type`` and ``iam_account_email`` in the query go to the engine).
    """

    engine_class = AlloyDBEngine

    @classmethod
    def class_name(cls) -> str:
        """Return ``AlloyDBChatStore``."""
        return "AlloyDBChatStore"
