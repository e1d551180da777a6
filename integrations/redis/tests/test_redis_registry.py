"""The redis schemes and class name resolve through core's registry (entry points)."""

from __future__ import annotations

from llama_index.storage.chat_store.core import (
    ChatMessage,
    chat_store_from_dict,
    chat_store_from_url,
)
from llama_index.storage.chat_store.redis import RedisChatStore


def test_url_and_dict_round_trip(redis_url: str) -> None:
    store = chat_store_from_url(f"{redis_url}?namespace=reg:&ttl=60")
    assert isinstance(store, RedisChatStore)
    assert (store.namespace, store.ttl) == ("reg:", 60)
    store.add_message("k", ChatMessage(content="x"))
    again = chat_store_from_dict(store.to_dict())
    assert isinstance(again, RedisChatStore)
    assert again.count_messages("k") == 1
    store.clear()
    for scheme in ("rediss", "unix"):
        assert isinstance(chat_store_from_url(f"{scheme}://localhost/0"), RedisChatStore)
