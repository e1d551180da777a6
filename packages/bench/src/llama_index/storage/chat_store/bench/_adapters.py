"""The measured verbs over our store and over a raw driver (the LlamaIndex side is _worker.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llama_index.storage.chat_store.bench._declare import RawDriver
from llama_index.storage.chat_store.bench._ops import (
    MESSAGES_PER_CONVERSATION,
    Adapter,
    StoreAdapter,
    sample_messages,
)
from llama_index.storage.chat_store.core import BaseChatStore, message_from_json


class OursAdapter(StoreAdapter):
    """Our store, through its public API (windowed reads, batch append, count).

    With ``llama-index-core`` installed (a dependency of this package), our store is a
    LlamaIndex ``BaseChatStore`` and goes straight into ``ChatMemoryBuffer`` for the turn.
    """

    supports_turn = True

    store: BaseChatStore

    def __init__(self, factory: Callable[[str], BaseChatStore], url: str) -> None:
        super().__init__(factory, url, [message_from_json(m) for m in sample_messages()])
        self.supports_volume = callable(getattr(self.store, "persist", None)) and callable(
            getattr(type(self.store), "from_persist_path", None)
        )

    def add_many(self, key: str, start: int, n: int) -> None:
        self.store.add_messages(key, [self._m(start + j) for j in range(n)])

    def get_last(self, key: str, n: int) -> object:
        return self.store.get_messages(key, offset=-n)

    def count(self, key: str) -> int:
        return self.store.count_messages(key)

    def close(self) -> None:
        self.store.close()

    def persist(self, path: str) -> None:
        self.volume.persist(path)

    def load(self, path: str) -> None:
        type(self.volume).from_persist_path(path)


class RawAdapter(Adapter):
    """A :class:`RawDriver`: the same verbs on message JSON strings with the bare client."""

    def __init__(self, factory: Callable[[str], RawDriver], url: str) -> None:
        self.factory = factory
        self.url = url
        self.driver = factory(url)
        self.messages = sample_messages()
        self.supports_volume = callable(getattr(self.driver, "persist", None)) and callable(
            getattr(self.driver, "load", None)
        )
        self.volume: Any = None

    def _m(self, i: int) -> str:
        return self.messages[i % len(self.messages)]

    def fill(self, key: str, n: int) -> None:
        self.driver.delete(key)
        self.driver.add_many(key, [self._m(i) for i in range(n)])

    def add(self, key: str, i: int) -> None:
        self.driver.add(key, self._m(i))

    def add_many(self, key: str, start: int, n: int) -> None:
        self.driver.add_many(key, [self._m(start + j) for j in range(n)])

    def get_all(self, key: str) -> object:
        return self.driver.get_all(key)

    def get_last(self, key: str, n: int) -> object:
        return self.driver.get_last(key, n)

    def count(self, key: str) -> int:
        return self.driver.count(key)

    def delete_last(self, key: str) -> object:
        return self.driver.delete_last(key)

    def delete(self, key: str) -> None:
        self.driver.delete(key)

    def close(self) -> None:
        self.driver.close()

    def new_volume(self, n: int) -> None:
        self.volume = self.factory(self.url)
        for c in range(0, n, MESSAGES_PER_CONVERSATION):
            size = min(MESSAGES_PER_CONVERSATION, n - c)
            self.volume.add_many(f"v{c}", [self._m(c + i) for i in range(size)])

    def persist(self, path: str) -> None:
        self.volume.persist(path)

    def load(self, path: str) -> None:
        self.volume.load(path)
