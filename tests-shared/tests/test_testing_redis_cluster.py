"""The Redis Cluster fixture forms a real three-node cluster that serves every slot."""

from __future__ import annotations

from urllib.parse import urlsplit

from llama_index.storage.chat_store.testing.services._redis_cluster import _cluster_state


def test_cluster_serves_every_slot_on_three_nodes(redis_cluster_url: str) -> None:
    port = urlsplit(redis_cluster_url).port
    assert port is not None
    state = _cluster_state(port)
    assert "cluster_state:ok" in state
    assert "cluster_slots_assigned:16384" in state
    assert "cluster_known_nodes:3" in state
