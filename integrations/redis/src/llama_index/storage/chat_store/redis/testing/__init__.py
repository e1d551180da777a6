"""Real Redis servers for tests: a redis-server, and a three-node Redis Cluster, on loopback.

For your own app's tests too (needs ``llama-index-storage-chat-store-testing``, the
``testing`` extra): ``start_redis()`` returns a running, restartable server on a free port
(``server.port``; ``server.cleanup()`` stops it). Under pytest the ``redis_url`` and
``redis_cluster_url`` session fixtures come from here (``CHAT_STORE_TEST_REDIS_URL`` /
``CHAT_STORE_TEST_REDIS_CLUSTER_URL`` point them at a server of yours). Upstash's bridge runs
in front of this redis-server.
"""

from llama_index.storage.chat_store.redis.testing._cluster import (
    redis_cluster_url,
    start_redis_cluster,
)
from llama_index.storage.chat_store.redis.testing._server import redis_ping, redis_url, start_redis

__all__ = ["redis_cluster_url", "redis_ping", "redis_url", "start_redis", "start_redis_cluster"]
