"""Test support for the Postgres family: a real PostgreSQL, stand-ins for Google's connectors.

For your own app's tests too (needs ``llama-index-storage-chat-store-testing``, the
``testing`` extra): ``start_postgres()`` returns a running, restartable server on a free port
(``postgresql://test@127.0.0.1:PORT/postgres``, trust authentication). Under pytest the
``postgres_url`` session fixture comes from here (``CHAT_STORE_TEST_POSTGRES_URL`` points it at
a database of yours). The YugabyteDB, AlloyDB and Cloud SQL packages test on this server:
:class:`LocalConnector` and :class:`LocalAsyncConnector` open plain connections to it where
Google's connectors would open a tunnel to an instance; :class:`GoogleStoreConformance` is the
suite for a store built on them.
"""

from llama_index.storage.chat_store.postgres.testing._checks import (
    NOT_A_MESSAGE,
    damage_second_message,
    round_trip_sync_and_async,
)
from llama_index.storage.chat_store.postgres.testing._google_cloud import (
    LocalAsyncConnector,
    LocalConnector,
    google_cloud_table,
    local_instance,
)
from llama_index.storage.chat_store.postgres.testing._server import (
    postgres_bindir,
    postgres_url,
    start_postgres,
)
from llama_index.storage.chat_store.postgres.testing.google import (
    GoogleStoreConformance,
    open_google_store,
    use_local_connectors,
)

__all__ = [
    "NOT_A_MESSAGE",
    "GoogleStoreConformance",
    "LocalAsyncConnector",
    "LocalConnector",
    "damage_second_message",
    "google_cloud_table",
    "local_instance",
    "open_google_store",
    "postgres_bindir",
    "postgres_url",
    "round_trip_sync_and_async",
    "start_postgres",
    "use_local_connectors",
]
