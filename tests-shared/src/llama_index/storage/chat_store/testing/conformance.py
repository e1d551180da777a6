"""The conformance suite every chat store runs.

A backend's test module subclasses :class:`ChatStoreConformance` and overrides
a few fixtures; every test method then runs against that backend. Three are enough:

* ``store_factory_for``: ``store_factory_for(name, *, address=None, **options)`` returns a
  picklable zero-argument callable building a NEW store instance over storage ``name`` (a
  namespace, table or key prefix of its own, made from ``name``: the same name is the same
  storage, secrets included), connecting to ``address`` (``(host, port)``) instead of the
  test server when given, with the constructor ``options`` (the suite passes ``ttl=`` and
  ``refresh_on_read=``). It should remove what it created when the test ends.
* ``make_corrupt`` (required): ``make_corrupt(key)`` puts unreadable data at position 1 of
  conversation ``key`` of ``store`` (message 0 stays readable) and returns the store to read
  it with; reading must raise ``CorruptDataError``.
* ``server_address`` (required when SHARED and EXACTLY_ONCE): ``(host, port)`` of the server
  ``store`` talks to (the fault tests put a :class:`.faults.FaultProxy` in front of it).

The suite derives the rest from ``store_factory_for``, and a backend may override any of them
instead (a store built differently, a server without addresses):

* ``store_factory``: the factory of storage ``storage_name`` (fresh per test); the oracle for
  persistence and what worker processes call. ``store``: an EMPTY store from it, cleared after.
* ``other_store``: a second empty store isolated from ``store`` on the same server.
* ``unreachable_store`` (used when SHARED): the same configuration pointed at a dead port.
* ``ttl_store_factory`` (used when TTL): ``ttl_store_factory(seconds, **options)`` builds an
  empty isolated store with that ttl and the other constructor ``options``.
* ``store_factory_at`` (used when EXACTLY_ONCE): ``store_factory_at(host, port)``, the factory
  of ``store``'s storage connecting to ``host:port`` instead.
* ``secrets`` (optional, default none): ``{"name": value}`` of secrets that must never appear
  in ``repr``/dumps and are passed to ``from_dict``.

Optional behaviour is gated by ``store.capabilities`` through :func:`requires`;
a skipped test names the capability. ``test_suite_guard`` fails when a subclass
deletes a suite test or overrides one without ``pytest.mark.xfail(strict=True,
reason=...)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.core import (
    BaseChatStore,
)
from llama_index.storage.chat_store.testing.basics import BasicTests
from llama_index.storage.chat_store.testing.catalog import CatalogTests
from llama_index.storage.chat_store.testing.faults import FaultProxy
from llama_index.storage.chat_store.testing.gates import requires
from llama_index.storage.chat_store.testing.inputs import InputTests
from llama_index.storage.chat_store.testing.lifecycle import AsyncTests, LifecycleTests
from llama_index.storage.chat_store.testing.samples import (
    LLAMA_INDEX_INSTALLED,
)
from llama_index.storage.chat_store.testing.services import free_port
from llama_index.storage.chat_store.testing.sharing import SharingTests
from llama_index.storage.chat_store.testing.tool_exchanges import ToolSafeTests, ToolSafeTrimTests

# One suite, two modes: with llama-index-core installed every store is LlamaIndex's and runs
# LlamaIndex's own memory modules and documentation examples; without it, the stand-alone checks.
if LLAMA_INDEX_INSTALLED:
    from llama_index.storage.chat_store.testing.llama_index_docs import LlamaIndexDocsTests
    from llama_index.storage.chat_store.testing.llama_index_memory import LlamaIndexMemoryTests

    class _ModeTests(LlamaIndexMemoryTests, LlamaIndexDocsTests):
        """LlamaIndex's memory modules and its documentation's examples over the store."""

else:
    from llama_index.storage.chat_store.testing.standalone import (  # type: ignore[assignment]
        StandaloneTests as _ModeTests,
    )

__all__ = ["ChatStoreConformance", "requires"]

_ASYNC_ALIASES = (
    "get_messages", "count_messages", "add_message", "add_messages", "set_messages",
    "delete_messages", "delete_message", "delete_last_message", "delete_oldest_messages",
    "get_keys",
)  # fmt: skip


def _factory_for(request: pytest.FixtureRequest) -> Callable[..., Callable[[], BaseChatStore]]:
    """The backend's ``store_factory_for``, for the fixtures the suite derives from it."""
    factory_for: Callable[..., Callable[[], BaseChatStore]]
    factory_for = request.getfixturevalue("store_factory_for")
    return factory_for


def _override_hint(name: str) -> str:
    return (
        f"the conformance suite needs the fixture {name!r}: override it in your "
        "ChatStoreConformance subclass (see the module docstring of "
        "llama_index.storage.chat_store.testing.conformance)"
    )


class ChatStoreConformance(
    _ModeTests,
    BasicTests,
    InputTests,
    SharingTests,
    AsyncTests,
    LifecycleTests,
    ToolSafeTests,
    ToolSafeTrimTests,
    CatalogTests,
):
    """Conformance tests for a :class:`BaseChatStore` implementation.

    With ``llama-index-core`` installed it also runs LlamaIndex's memory modules over the
    store (``llama_index_memory.LlamaIndexMemoryTests``) and the examples of LlamaIndex's
    chat-store documentation (``llama_index_docs.LlamaIndexDocsTests``); without it, the
    stand-alone checks (``standalone.StandaloneTests``). In both, each from its module: the
    basic reads, writes and keys (``basics``), bad input and payloads (``inputs``),
    persistence, concurrency and faults (``sharing``), the async API, life cycle and expiry
    (``lifecycle``), tool-safe windows and trims (``tool_exchanges``) and the conversation
    catalog (``catalog``). This module holds the fixtures a backend overrides and the guard.
    """

    # -- fixtures a backend overrides -----------------------------------------------------

    @pytest.fixture
    def store_factory_for(self) -> Callable[..., Callable[[], BaseChatStore]]:
        """``store_factory_for(name, *, address=None, **options)`` (see the module docstring)."""
        pytest.fail(_override_hint("store_factory_for"))

    @pytest.fixture
    def storage_name(self) -> str:
        """The name of the storage of ``store``: fresh for every test."""
        return f"t{uuid.uuid4().hex[:16]}"

    @pytest.fixture
    def store_factory(
        self, request: pytest.FixtureRequest, storage_name: str
    ) -> Callable[[], BaseChatStore]:
        """A picklable zero-argument callable building a store over the same storage."""
        return _factory_for(request)(storage_name)

    @pytest.fixture
    def store(self, store_factory: Callable[[], BaseChatStore]) -> Iterator[BaseChatStore]:
        """An empty, isolated store."""
        store = store_factory()
        store.clear()
        yield store
        store.clear()
        store.close()

    @pytest.fixture
    def other_store(self, request: pytest.FixtureRequest) -> Iterator[BaseChatStore]:
        """A second empty store isolated from ``store``."""
        other = _factory_for(request)(f"o{uuid.uuid4().hex[:16]}")()
        yield other
        other.clear()
        other.close()

    @pytest.fixture
    def unreachable_store(self, request: pytest.FixtureRequest, storage_name: str) -> BaseChatStore:
        """The same configuration pointed at a dead port."""
        return _factory_for(request)(storage_name, address=("127.0.0.1", free_port()))()

    @pytest.fixture
    def ttl_store_factory(
        self, request: pytest.FixtureRequest, storage_name: str
    ) -> Iterator[Callable[..., BaseChatStore]]:
        """``factory(seconds, **options)``: an empty isolated store with that ttl and options."""
        factory_for = _factory_for(request)
        made: list[BaseChatStore] = []

        def make(seconds: int, **options: Any) -> BaseChatStore:
            made.append(factory_for(storage_name, ttl=seconds, **options)())
            return made[-1]

        yield make
        for store in made:
            store.clear()
            store.close()

    @pytest.fixture
    def make_corrupt(self) -> Callable[[str], BaseChatStore]:
        """``make_corrupt(key)``: unreadable data at position 1 of ``key``; returns the store."""
        pytest.fail(_override_hint("make_corrupt"))

    @pytest.fixture
    def server_address(self) -> tuple[str, int]:
        """Where the server of ``store`` listens: ``(host, port)``."""
        pytest.fail(_override_hint("server_address"))

    @pytest.fixture
    def store_factory_at(
        self, request: pytest.FixtureRequest, storage_name: str
    ) -> Callable[[str, int], Callable[[], BaseChatStore]]:
        """``store_factory_at(host, port)``: ``store_factory`` connecting to that address."""
        factory_for = _factory_for(request)
        return lambda host, port: factory_for(storage_name, address=(host, port))

    @pytest.fixture
    def fault_proxy(self, server_address: tuple[str, int]) -> Iterator[FaultProxy]:
        """A fault proxy in front of the server of ``store``."""
        with FaultProxy(*server_address) as proxy:
            yield proxy

    @pytest.fixture
    def proxied_store(
        self,
        store: BaseChatStore,
        fault_proxy: FaultProxy,
        store_factory_at: Callable[[str, int], Callable[[], BaseChatStore]],
    ) -> Iterator[BaseChatStore]:
        """A store over the storage of ``store``, talking to its server through the proxy."""
        proxied = store_factory_at(fault_proxy.host, fault_proxy.port)()
        yield proxied
        proxied.close()

    @pytest.fixture
    def secrets(self) -> dict[str, str]:
        """Secrets of the store's configuration, by constructor argument name."""
        return {}

    @pytest.fixture(autouse=True)
    def _capability_gate(self, request: pytest.FixtureRequest) -> None:
        needed = getattr(request.function, "__chat_store_requires__", ())
        if not needed:
            return
        store: BaseChatStore = request.getfixturevalue("store")
        missing = [c.value for c in needed if c not in store.capabilities]
        if missing:
            pytest.skip(f"{type(store).__name__} lacks capability {', '.join(missing)}")

    # -- the guard -------------------------------------------------------------------------

    def test_suite_guard(self, store: BaseChatStore) -> None:
        """No suite test is deleted or silently overridden; no async_X alias is overridden.

        If this fails: restore the test, or mark the override
        ``@pytest.mark.xfail(strict=True, reason="...")``; implement ``aX``, not ``async_X``.
        """
        problems = []
        suite: dict[str, Any] = {}
        for klass in reversed(ChatStoreConformance.__mro__):
            suite.update(vars(klass))
        for name, original in suite.items():
            if not name.startswith("test_"):
                continue
            current = getattr(type(self), name, None)
            if current is original:
                continue
            if not callable(current):
                problems.append(f"{name} was removed")
                continue
            marks = getattr(current, "pytestmark", [])
            if not any(
                m.name == "xfail" and m.kwargs.get("strict") is True and m.kwargs.get("reason")
                for m in marks
            ):
                problems.append(f"{name} is overridden without xfail(strict=True, reason=...)")
        for alias in _ASYNC_ALIASES:
            if getattr(type(store), f"async_{alias}") is not getattr(
                BaseChatStore, f"async_{alias}"
            ):
                problems.append(f"{type(store).__name__} overrides async_{alias}")
        assert not problems, "; ".join(problems)
