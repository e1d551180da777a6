"""YugabyteDB for tests: a database on a real PostgreSQL answering like YugabyteDB.

Under pytest the ``yugabytedb_url`` session fixture comes from here, on the ``postgres_url``
server of ``llama_index.storage.chat_store.postgres.testing`` (``CHAT_STORE_TEST_YUGABYTEDB_URL``
points it at a real YugabyteDB). :func:`install_yugabytedb_shims` makes any PostgreSQL database
pass the smart driver's and the SQLAlchemy dialect's checks (needs ``psql``).
"""

from llama_index.storage.chat_store.yugabytedb.testing._server import (
    install_yugabytedb_shims,
    yugabytedb_url,
)

__all__ = ["install_yugabytedb_shims", "yugabytedb_url"]
