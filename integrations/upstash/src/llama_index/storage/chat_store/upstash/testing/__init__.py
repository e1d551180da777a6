"""Upstash for tests: a bridge speaking Upstash's REST protocol in front of a real redis-server.

For your own app's tests too (needs ``llama-index-storage-chat-store-testing``, the
``testing`` extra): ``start_upstash_bridge(redis_url)`` serves on a free loopback port
(``bridge.endpoint`` is the URL and token to give ``upstash_redis.Redis``). Under pytest the
``upstash_rest`` session fixture comes from here, in front of the ``redis_url`` fixture of
``llama_index.storage.chat_store.redis.testing`` (``CHAT_STORE_TEST_UPSTASH_URL`` and
``CHAT_STORE_TEST_UPSTASH_TOKEN`` point it at a real database).
"""

from llama_index.storage.chat_store.upstash.testing._server import (
    UpstashBridge,
    UpstashEndpoint,
    start_upstash_bridge,
    start_upstash_bridge_process,
    upstash_rest,
)

__all__ = [
    "UpstashBridge",
    "UpstashEndpoint",
    "start_upstash_bridge",
    "start_upstash_bridge_process",
    "upstash_rest",
]
