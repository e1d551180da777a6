"""The test servers of ``redis.testing``: a real redis-server, and a real three-node cluster."""

from __future__ import annotations

from urllib.parse import urlsplit

from llama_index.storage.chat_store.redis.testing import redis_ping
from llama_index.storage.chat_store.redis.testing._cluster import _cluster_state


def test_redis_url_answers_ping(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    assert redis_ping(parts.port or 6379, parts.hostname or "127.0.0.1")


def test_cluster_serves_every_slot_on_three_nodes(redis_cluster_url: str) -> None:
    port = urlsplit(redis_cluster_url).port
    assert port is not None
    state = _cluster_state(port)
    assert "cluster_state:ok" in state
    assert "cluster_slots_assigned:16384" in state
    assert "cluster_known_nodes:3" in state
