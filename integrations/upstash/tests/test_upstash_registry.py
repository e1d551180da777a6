"""The upstash schemes and class name resolve through core's registry (entry points)."""

from __future__ import annotations

from llama_index.storage.chat_store.core import (
    ChatMessage,
    chat_store_from_dict,
    chat_store_from_url,
)
from llama_index.storage.chat_store.upstash import UpstashChatStore
from llama_index.storage.chat_store.upstash.testing import UpstashEndpoint


def test_url_and_dict_round_trip(upstash_rest: UpstashEndpoint) -> None:
    host = upstash_rest.url.split("://", 1)[1]
    store = chat_store_from_url(
        f"upstash+http://{host}?namespace=reg:&token={upstash_rest.token}", rest_retries=0
    )
    assert isinstance(store, UpstashChatStore)
    store.add_message("k", ChatMessage(content="x"))
    again = chat_store_from_dict(store.to_dict(), redis_token=upstash_rest.token)
    assert isinstance(again, UpstashChatStore)
    assert again.count_messages("k") == 1
    store.clear()
    secure = chat_store_from_url("upstash+https://eu1-x.upstash.io?token=t")
    assert isinstance(secure, UpstashChatStore)
    assert secure.redis_url == "https://eu1-x.upstash.io"
