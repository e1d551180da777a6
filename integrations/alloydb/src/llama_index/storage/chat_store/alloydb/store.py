"""AlloyDBChatStore: the Postgres store over Google's AlloyDB chat store table."""

from __future__ import annotations

from typing import Any, ClassVar

from llama_index.storage.chat_store.alloydb.engine import AlloyDBEngine
from llama_index.storage.chat_store.postgres import ConnectorEngine, PostgresChatStore
from llama_index.storage.chat_store.postgres.store import LayoutOption

__all__ = ["AlloyDBChatStore"]


class AlloyDBChatStore(PostgresChatStore):
    """Chat histories in AlloyDB, in the table ``llama-index-alloydb-pg`` uses.

    One row per message (``id SERIAL, key VARCHAR, message JSON``, index
    ``"<table>_idx_key"``): tables created by Google's package work here and the other
    way round, and Google's writers may share them, so there are no bookkeeping rows and
    no TTL. Appends, pops and windows are single statements like the Postgres store's.
    Changes record their operation ids in a table of their own, ``<table>_ops``, so a change
    retried after a lost connection applies once (see :class:`PostgresChatStore`).

    Build it with :meth:`create_sync` / :meth:`create` from an :class:`AlloyDBEngine`, or
    :meth:`from_url` (``alloydb://PROJECT/REGION/CLUSTER/INSTANCE/DATABASE?table=...``;
    ``user``, ``ip_type`` and ``iam_account_email`` in the query go to the engine).
    """

    layout: LayoutOption = "google"

    _default_layout: ClassVar[Any] = "google"
    _url_schemes: ClassVar[tuple[str, ...]] = ("alloydb",)
    _engine_class: ClassVar[type[ConnectorEngine] | None] = AlloyDBEngine

    @classmethod
    def class_name(cls) -> str:
        """Return ``AlloyDBChatStore``."""
        return "AlloyDBChatStore"
