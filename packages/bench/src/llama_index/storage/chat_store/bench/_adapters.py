"""The measured verbs over our store and over a raw driver (the LlamaIndex side is _worker.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.storage.chat_store.bench._declare import RawDriver
from llama_index.storage.chat_store.bench._ops import (
    BATCH,
    MESSAGES_PER_CONVERSATION,
    PAGE,
    Adapter,
    StoreAdapter,
    conversation,
    sample_messages,
)
from llama_index.storage.chat_store.core import (
    BaseChatStore,
    Capability,
    ChatMessage,
    message_from_json,
)
from llama_index.storage.chat_store.core.backend import PlannedChatStore

FillCatalog = Callable[[BaseChatStore, Sequence[str], ChatMessage], None]
FILL_CONCURRENCY = 32
"""Appends in flight at once when filling a catalog through the async API."""


def add_concurrently(store: BaseChatStore, keys: Sequence[str], message: ChatMessage) -> None:
    """Put ``message`` under each key with ``aadd_messages``, many at once on one event loop.

    The default catalog fill (untimed): the store's own write path, without waiting for one
    round trip before sending the next.
    """

    async def fill() -> None:
        pending = iter(keys)

        async def appender() -> None:
            for key in pending:  # one iterator shared by every appender
                await store.aadd_messages(key, [message])

        try:
            await asyncio.gather(*(appender() for _ in range(FILL_CONCURRENCY)))
        finally:
            await store.aclose()  # its async clients belong to this loop

    asyncio.run(fill())


def count_steps(store: BaseChatStore, call: Callable[[], object]) -> int | None:
    """Return how many steps the store's plan sent for ``call`` (``None``: not a planned store).

    A step is one call of the backend kit's ``_execute``: one script call or request on Redis
    and Upstash, one statement or statement group elsewhere. Counted on an untimed call.
    """
    if not isinstance(store, PlannedChatStore):
        return None
    execute, sent = store._execute, 0

    def counting(step: Any) -> Any:
        nonlocal sent
        sent += 1
        return execute(step)

    # An instance attribute shadows the method for this one call (the kit looks it up per step).
    object.__setattr__(store, "_execute", counting)
    try:
        call()
    finally:
        object.__delattr__(store, "_execute")
    return sent


class OursAdapter(StoreAdapter):
    """Our store, through its public API (windowed reads, batch append, count).

    With ``llama-index-core`` installed (a dependency of this package), our store is a
    LlamaIndex ``BaseChatStore`` and goes straight into ``ChatMemoryBuffer`` for the turn.
    """

    supports_turn = True
    supports_tool_safe = True

    store: BaseChatStore

    def __init__(
        self,
        factory: Callable[[str], BaseChatStore],
        url: str,
        fill_catalog: FillCatalog | None = None,
    ) -> None:
        super().__init__(factory, url, [message_from_json(m) for m in sample_messages()])
        self.supports_volume = callable(getattr(self.store, "persist", None)) and callable(
            getattr(type(self.store), "from_persist_path", None)
        )
        self.supports_catalog = Capability.CATALOG in self.store.capabilities
        self.fill_catalog = fill_catalog or add_concurrently

    def add_many(self, key: str, start: int, n: int) -> None:
        self.store.add_messages(key, [self._m(start + j) for j in range(n)])

    def get_last(self, key: str, n: int) -> object:
        return self.store.get_messages(key, offset=-n)

    def get_last_safe(self, key: str, n: int) -> object:
        return self.store.get_messages(key, offset=-n, tool_safe=True)

    def count(self, key: str) -> int:
        return self.store.count_messages(key)

    def grow_catalog(self, keys: list[str]) -> None:
        self.fill_catalog(self.catalog_store(), keys, self._m(0))

    def list_page(self) -> object:
        return self.catalog.list_conversations(limit=PAGE)

    def drop_catalog(self) -> None:
        self.catalog.clear()
        self.catalog.close()
        self.catalog = None

    def round_trips(self, op: str, key: str) -> int | None:
        """Steps one untimed call of ``op`` sends (see :func:`count_steps`)."""
        calls: dict[str, Callable[[], object]] = {
            "get_last": lambda: self.get_last(key, BATCH),
            "get_last_safe": lambda: self.get_last_safe(key, BATCH),
            "list_page": self.list_page,
        }
        store = self.catalog if op == "list_page" else self.store
        return count_steps(store, calls[op])

    def close(self) -> None:
        if self.catalog is not None:
            self.drop_catalog()
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
        self.supports_catalog = all(
            callable(getattr(self.driver, verb, None))
            for verb in ("catalog_fill", "catalog_page", "catalog_drop")
        )
        self.volume: Any = None
        self.catalog: list[str] = []

    def _m(self, i: int) -> str:
        return self.messages[i % len(self.messages)]

    def fill(self, key: str, n: int) -> None:
        self.driver.delete(key)
        self.driver.add_many(key, [self._m(i) for i in conversation(n)])

    def add(self, key: str, i: int) -> None:
        self.driver.add(key, self._m(i))

    def add_many(self, key: str, start: int, n: int) -> None:
        self.driver.add_many(key, [self._m(start + j) for j in range(n)])

    def get_all(self, key: str) -> object:
        return self.driver.get_all(key)

    def get_last(self, key: str, n: int) -> object:
        return self.driver.get_last(key, n)

    # The bare client has no tool-exchange rule: its floor for a tool-safe window is the plain one.
    supports_tool_safe = True
    get_last_safe = get_last

    def grow_catalog(self, keys: list[str]) -> None:
        self.driver.catalog_fill(keys, self._m(0))  # type: ignore[attr-defined]
        self.catalog += keys

    def list_page(self) -> object:
        return self.driver.catalog_page(PAGE)  # type: ignore[attr-defined]

    def drop_catalog(self) -> None:
        self.driver.catalog_drop(self.catalog)  # type: ignore[attr-defined]
        self.catalog = []

    def count(self, key: str) -> int:
        return self.driver.count(key)

    def delete_last(self, key: str) -> object:
        return self.driver.delete_last(key)

    def delete(self, key: str) -> None:
        self.driver.delete(key)

    def close(self) -> None:
        if self.catalog:
            self.drop_catalog()
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
