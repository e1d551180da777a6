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

import asyncio
import concurrent.futures
import multiprocessing
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.core import (
    MAX_KEY_BYTES,
    MAX_KEY_CHARS,
    BackendUnavailableError,
    BaseChatStore,
    Capability,
    ChatMessage,
    CorruptDataError,
    InvalidKeyError,
    InvalidMessageError,
    SerializationError,
    TextBlock,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import corrupt_data_remedy
from llama_index.storage.chat_store.testing import _workers, changes, history
from llama_index.storage.chat_store.testing.catalog import CatalogTests
from llama_index.storage.chat_store.testing.faults import FaultKind, FaultProxy
from llama_index.storage.chat_store.testing.gates import requires
from llama_index.storage.chat_store.testing.samples import (
    HOSTILE_KEYS,
    LLAMA_INDEX_INSTALLED,
    every_block_type,
    numbered,
    tricky_messages,
)
from llama_index.storage.chat_store.testing.services import free_port
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

FAULT_RATE = 0.04
"""The share of requests (half before the server, half after it answered) the history check
under faults drops."""
_ASYNC_ALIASES = (
    "get_messages", "count_messages", "add_message", "add_messages", "set_messages",
    "delete_messages", "delete_message", "delete_last_message", "delete_oldest_messages",
    "get_keys",
)  # fmt: skip


def _texts(messages: list[ChatMessage] | None) -> list[str | None]:
    return [m.content for m in messages or []]


def _jsons(messages: list[ChatMessage] | None) -> list[str]:
    return [message_to_json(m) for m in messages or []]


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


def _nested(depth: int) -> dict[str, Any]:
    """Return ``additional_kwargs`` nested ``depth`` dicts deep."""
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


class ChatStoreConformance(_ModeTests, ToolSafeTests, ToolSafeTrimTests, CatalogTests):
    """Conformance tests for a :class:`BaseChatStore` implementation.

    With ``llama-index-core`` installed it also runs LlamaIndex's memory modules over the
    store (``llama_index_memory.LlamaIndexMemoryTests``) and the examples of LlamaIndex's
    chat-store documentation (``llama_index_docs.LlamaIndexDocsTests``); without it, the
    stand-alone checks (``standalone.StandaloneTests``). In both: tool-safe windows and trims
    (``tool_exchanges``) and the conversation catalog (``catalog.CatalogTests``).
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

    # -- reading ---------------------------------------------------------------------------

    def test_missing_key_reads_as_empty(self, store: BaseChatStore) -> None:
        """A key never written reads as an empty conversation everywhere.

        If this fails: a read raises or returns a placeholder for a missing key.
        """
        assert store.get_messages("missing") == []
        assert store.count_messages("missing") == 0
        assert store.delete_messages("missing") is None
        assert store.delete_last_message("missing") is None
        assert store.delete_message("missing", 0) is None
        assert store.delete_oldest_messages("missing", 3) == []
        assert store.get_keys() == []

    def test_messages_come_back_in_insertion_order(self, store: BaseChatStore) -> None:
        """Appended messages read back in order, equal to what was written.

        If this fails: the backend reorders (reverse range, unordered rows) or drops fields.
        """
        for message in numbered(5):
            store.add_message("k", message)
        assert _texts(store.get_messages("k")) == ["m0", "m1", "m2", "m3", "m4"]
        assert store.count_messages("k") == 5

    @pytest.mark.parametrize(
        ("offset", "limit"),
        [(0, None), (0, 3), (2, None), (2, 2), (7, 5), (0, 0), (12, None), (12, 1),
         (-3, None), (-3, 2), (-12, None), (-12, 3), (-1, 1), (11, 10)],
    )  # fmt: skip
    def test_get_messages_window(
        self, store: BaseChatStore, offset: int, limit: int | None
    ) -> None:
        """get_messages(offset, limit) is all[offset:][:limit], negative offset from the end.

        If this fails: the backend's range arithmetic is off by one or mishandles negatives.
        """
        store.add_messages("k", numbered(12))
        expected = [f"m{i}" for i in range(12)][offset:]
        expected = expected if limit is None else expected[:limit]
        assert _texts(store.get_messages("k", offset=offset, limit=limit)) == expected

    def test_negative_limit_is_rejected(self, store: BaseChatStore) -> None:
        """Limit < 0 raises ValueError.

        If this fails: the backend forwards a negative limit to its driver.
        """
        with pytest.raises(ValueError, match="limit"):
            store.get_messages("k", limit=-1)

    # -- writing ---------------------------------------------------------------------------

    @pytest.mark.parametrize("idx", [0, 1, 3, 5, 9, -1, -2, -5, -9])
    def test_add_message_at_index(self, store: BaseChatStore, idx: int) -> None:
        """add_message(idx=i) inserts like list.insert, including out-of-range and negative i.

        If this fails: the insert script/transaction mishandles bounds or renumbering.
        """
        store.add_messages("k", numbered(5))
        store.add_message("k", ChatMessage(role="user", content="new"), idx=idx)
        expected: list[str | None] = [f"m{i}" for i in range(5)]
        expected.insert(idx, "new")
        assert _texts(store.get_messages("k")) == expected
        store.add_message("k", ChatMessage(role="user", content="tail"))
        assert _texts(store.get_messages("k", offset=-1)) == ["tail"]

    def test_add_message_at_index_on_missing_key(self, store: BaseChatStore) -> None:
        """Inserting into a missing key creates it.

        If this fails: insert assumes the conversation exists.
        """
        store.add_message("k", ChatMessage(content="only"), idx=3)
        assert _texts(store.get_messages("k")) == ["only"]
        assert store.get_keys() == ["k"]

    def test_add_messages_appends_batch(self, store: BaseChatStore) -> None:
        """add_messages appends in order; [] is a no-op that creates nothing.

        If this fails: the batch is written out of order or an empty batch creates a key.
        """
        store.add_messages("k", numbered(2))
        store.add_messages("k", numbered(3, start=2))
        store.add_messages("k", [])
        store.add_messages("empty", [])
        assert _texts(store.get_messages("k")) == ["m0", "m1", "m2", "m3", "m4"]
        assert store.get_keys() == ["k"]

    def test_set_messages_replaces(self, store: BaseChatStore) -> None:
        """set_messages replaces the whole conversation; [] removes the key.

        If this fails: old messages survive a replace, or an empty replace leaves a key.
        """
        store.add_messages("k", numbered(4))
        store.set_messages("k", numbered(2, prefix="n"))
        assert _texts(store.get_messages("k")) == ["n0", "n1"]
        store.set_messages("k", [])
        assert store.get_messages("k") == []
        assert store.get_keys() == []
        store.set_messages("fresh", numbered(1))
        assert store.count_messages("fresh") == 1

    def test_delete_messages_returns_them(self, store: BaseChatStore) -> None:
        """delete_messages removes the conversation and returns its messages in order.

        If this fails: the returned list is reversed/empty or the key survives.
        """
        store.add_messages("k", numbered(3))
        assert _texts(store.delete_messages("k")) == ["m0", "m1", "m2"]
        assert store.count_messages("k") == 0
        assert store.get_keys() == []
        assert store.delete_messages("k") is None

    @pytest.mark.parametrize("idx", [0, 2, 4, -1, -3, -5])
    def test_delete_message_by_index(self, store: BaseChatStore, idx: int) -> None:
        """delete_message(i) removes and returns exactly message i, keeping the others' order.

        If this fails: the delete script removes another element or reorders the rest.
        """
        store.add_messages("k", numbered(5))
        expected: list[str | None] = [f"m{i}" for i in range(5)]
        removed = expected.pop(idx)
        got = store.delete_message("k", idx)
        assert got is not None
        assert got.content == removed
        assert _texts(store.get_messages("k")) == expected

    @pytest.mark.parametrize("idx", [5, 6, 100, -6, -100])
    def test_delete_message_out_of_range(self, store: BaseChatStore, idx: int) -> None:
        """delete_message out of range returns None and changes nothing.

        If this fails: an out-of-range index raises or clamps to an end.
        """
        store.add_messages("k", numbered(5))
        assert store.delete_message("k", idx) is None
        assert store.count_messages("k") == 5

    def test_delete_last_message(self, store: BaseChatStore) -> None:
        """delete_last_message pops from the end; the key disappears when emptied.

        If this fails: the pop takes the wrong end or leaves an empty key listed.
        """
        store.add_messages("k", numbered(2))
        assert _texts([store.delete_last_message("k")]) == ["m1"]  # type: ignore[list-item]
        assert _texts([store.delete_last_message("k")]) == ["m0"]  # type: ignore[list-item]
        assert store.delete_last_message("k") is None
        assert store.get_keys() == []

    @pytest.mark.parametrize(("n", "kept"), [(0, 5), (2, 3), (5, 0), (9, 0)])
    def test_delete_oldest_messages(self, store: BaseChatStore, n: int, kept: int) -> None:
        """delete_oldest_messages(n) removes and returns the first n (fewer if shorter).

        If this fails: the backend removes from the wrong end or miscounts.
        """
        store.add_messages("k", numbered(5))
        removed = store.delete_oldest_messages("k", n)
        assert _texts(removed) == [f"m{i}" for i in range(min(n, 5))]
        assert _texts(store.get_messages("k")) == [f"m{i}" for i in range(5 - kept, 5)]
        assert (store.get_keys() == ["k"]) == (kept > 0)

    # -- keys ------------------------------------------------------------------------------

    def test_get_keys_lists_live_conversations(self, store: BaseChatStore) -> None:
        """get_keys lists each non-empty conversation once; iter_keys yields the same.

        If this fails: emptied keys stay registered, or a key is listed twice.
        """
        for key in ("a", "b", "c"):
            store.add_messages(key, numbered(2))
        store.add_message("a", ChatMessage(content="again"))
        store.delete_messages("b")
        store.add_message("d", ChatMessage(content="x"))
        store.delete_last_message("d")
        assert sorted(store.get_keys()) == ["a", "c"]
        assert sorted(store.iter_keys()) == ["a", "c"]

    def test_iter_keys_pages_through_many(self, store: BaseChatStore) -> None:
        """iter_keys yields every key even when there are more than a page of them.

        If this fails: paging stops after the first page or repeats a page.
        """
        keys = [f"key-{i:04d}" for i in range(230)]
        for key in keys:
            store.add_message(key, ChatMessage(content=key))
        listed = list(store.iter_keys())
        assert sorted(listed) == keys
        assert len(listed) == len(set(listed))

    def test_clear_removes_everything(self, store: BaseChatStore) -> None:
        """clear() removes every conversation of the store.

        If this fails: clear leaves keys or registry entries behind.
        """
        store.add_messages("a", numbered(2))
        store.add_messages("b", numbered(2))
        store.clear()
        assert store.get_keys() == []
        assert store.get_messages("a") == []

    def test_stores_are_isolated(self, store: BaseChatStore, other_store: BaseChatStore) -> None:
        """Two isolated stores never see each other's keys or messages.

        If this fails: the namespace/table prefix is not applied to every operation.
        """
        store.add_message("shared-key", ChatMessage(content="mine"))
        other_store.add_message("other-key", ChatMessage(content="theirs"))
        assert store.get_keys() == ["shared-key"]
        assert other_store.get_keys() == ["other-key"]
        assert other_store.get_messages("shared-key") == []
        other_store.clear()
        assert store.count_messages("shared-key") == 1

    # -- bad input -------------------------------------------------------------------------

    @pytest.mark.parametrize("key", [None, 1, b"bytes", "", "nul\x00key", "lone \ud800 surrogate"])
    def test_invalid_keys_are_rejected(self, store: BaseChatStore, key: Any) -> None:
        """Non-str, empty, NUL and lone-surrogate keys raise InvalidKeyError from every method.

        If this fails: the method does not call the base class's key check.
        """
        message = ChatMessage(content="x")
        calls: list[Callable[[], Any]] = [
            lambda: store.get_messages(key),
            lambda: store.count_messages(key),
            lambda: store.add_message(key, message),
            lambda: store.add_messages(key, [message]),
            lambda: store.set_messages(key, [message]),
            lambda: store.delete_messages(key),
            lambda: store.delete_message(key, 0),
            lambda: store.delete_last_message(key),
            lambda: store.delete_oldest_messages(key, 1),
        ]
        for call in calls:
            with pytest.raises(InvalidKeyError):
                call()
        assert store.get_keys() == []

    def test_key_limits(self, store: BaseChatStore) -> None:
        """256 characters / 1,024 UTF-8 bytes work; beyond the store's limit is InvalidKeyError.

        If this fails: the backend's key column/encoding is too small, or the limit is unchecked.
        """
        longest = ["k" * MAX_KEY_CHARS, "😀" * (MAX_KEY_BYTES // 4)]
        for key in longest:
            store.add_message(key, ChatMessage(content=key[:5]))
            assert store.count_messages(key) == 1
        assert sorted(store.get_keys()) == sorted(longest)
        with pytest.raises(InvalidKeyError):
            store.add_message("k" * (type(store).max_key_bytes + 1), ChatMessage(content="x"))

    def test_hostile_keys_are_data(self, store: BaseChatStore) -> None:
        """Keys with quotes, wildcards, separators and unicode behave like any other key.

        If this fails: a key is interpolated into a query, pattern or path.
        """
        for i, key in enumerate(HOSTILE_KEYS):
            store.add_messages(key, numbered(i % 3 + 1, prefix=f"{i}-"))
        assert sorted(store.get_keys()) == sorted(HOSTILE_KEYS)
        for i, key in enumerate(HOSTILE_KEYS):
            assert _texts(store.get_messages(key)) == [f"{i}-{j}" for j in range(i % 3 + 1)]
        store.delete_messages("nobody' OR '1'='1")
        assert len(store.get_keys()) == len(HOSTILE_KEYS) - 1

    @pytest.mark.parametrize("value", ["text", 42, None, object(), [ChatMessage(content="x")]])
    def test_non_messages_are_rejected(self, store: BaseChatStore, value: Any) -> None:
        """A value that is not a message raises InvalidMessageError and writes nothing.

        If this fails: the method does not coerce its input through core.
        """
        with pytest.raises(InvalidMessageError):
            store.add_message("k", value)
        with pytest.raises(InvalidMessageError):
            store.add_messages("k", [ChatMessage(content="ok"), value])
        with pytest.raises(InvalidMessageError):
            store.set_messages("k", [value])
        assert store.get_keys() == []

    @pytest.mark.parametrize(
        "kwargs",
        [{"o": object()}, {"s": "lone \ud800"}, _nested(300), _nested(5000)],
        ids=["object", "lone-surrogate", "nested-300", "nested-5000"],
    )
    def test_unsaveable_messages_are_rejected(
        self, store: BaseChatStore, kwargs: dict[str, Any]
    ) -> None:
        """A message JSON cannot carry raises SerializationError, writes nothing, harms nothing.

        If this fails: the store accepts what it can never write back (so a later save of
        the whole store fails), or a deep value escapes as a raw RecursionError.
        """
        store.add_message("k", ChatMessage(content="kept"))
        bad = ChatMessage(content="x", additional_kwargs=kwargs)
        with pytest.raises(SerializationError):
            store.add_message("k", bad)
        with pytest.raises(SerializationError):
            store.add_messages("k", [ChatMessage(content="ok"), bad])
        with pytest.raises(SerializationError):
            store.set_messages("k", [bad])
        assert _texts(store.get_messages("k")) == ["kept"]
        store.add_message("k", ChatMessage(content="after"))
        assert _texts(store.get_messages("k")) == ["kept", "after"]

    def test_dict_messages_are_accepted(self, store: BaseChatStore) -> None:
        """A dict in the wire shape (current or legacy) is converted to a message.

        If this fails: the method does not coerce its input through core.
        """
        legacy: Any = {"role": "user", "content": "legacy"}
        current: Any = {"role": "assistant", "blocks": [{"block_type": "text", "text": "b"}]}
        store.add_message("k", legacy)
        store.add_messages("k", [current])
        assert _texts(store.get_messages("k")) == ["legacy", "b"]

    def test_corrupt_data_raises(self, make_corrupt: Callable[[str], BaseChatStore]) -> None:
        """Unreadable stored data raises CorruptDataError naming the key or file.

        A conversation's error also says how to remove it (core's one sentence).

        If this fails: the backend skips or returns garbage instead of raising, or builds
        its own error text instead of ending it with core's ``corrupt_data_remedy``.
        """
        key = "corrupt-key"
        with pytest.raises(CorruptDataError) as info:  # noqa: PT012 (either step may detect it)
            reader = make_corrupt(key)
            reader.get_messages(key)
        text = str(info.value)
        assert ".json" in text or (key in text and corrupt_data_remedy(key) in text)

    @pytest.mark.parametrize(
        "removal", ["delete_messages", "delete_last_message", "delete_message", "delete_oldest"]
    )
    def test_corrupt_data_is_never_skipped_and_can_be_removed(
        self, make_corrupt: Callable[[str], BaseChatStore], removal: str
    ) -> None:
        """A removal that meets unreadable data removes it, then raises CorruptDataError.

        The one rule on every backend: the removal does what it was asked, then the error
        names the key and position, says the data was removed and holds it as stored
        (``data``), so nothing is lost without the caller knowing and corrupt data can
        always be removed. set_messages(key, []) removes a corrupt conversation silently.

        If this fails: a delete skips the bad message, or refuses to remove it, or raises
        without saying where it was or without handing it back.
        """
        key = "corrupt-key"
        try:
            store = make_corrupt(key)
        except CorruptDataError as exc:  # a file store: the whole file is unreadable
            unreadable = str(exc)
            assert ".json" in unreadable
            return
        remove: dict[str, Callable[[], Any]] = {
            "delete_messages": lambda: store.delete_messages(key),
            "delete_last_message": lambda: store.delete_last_message(key),
            "delete_message": lambda: store.delete_message(key, 1),
            "delete_oldest": lambda: store.delete_oldest_messages(key, 2),
        }
        with pytest.raises(CorruptDataError) as info:
            remove[removal]()
        assert (info.value.key, info.value.position) == (key, 1)
        assert "removed" in str(info.value)
        assert isinstance(info.value.data, (str, bytes))
        assert info.value.data
        left = [] if removal in ("delete_messages", "delete_oldest") else ["fine"]
        assert _texts(store.get_messages(key)) == left
        assert store.count_messages(key) == len(left)
        make_corrupt(key + "2")
        store.set_messages(key + "2", [])
        assert store.get_messages(key + "2") == []
        assert key + "2" not in store.get_keys()

    # -- payloads --------------------------------------------------------------------------

    def test_every_block_type_round_trips(self, store: BaseChatStore) -> None:
        """Every block type comes back byte-identical.

        If this fails: the backend stores messages through something other than core's
        serializer, or truncates/re-encodes fields.
        """
        messages = every_block_type()
        store.add_messages("k", messages)
        assert _jsons(store.get_messages("k")) == _jsons(messages)

    def test_tricky_payloads_round_trip(self, store: BaseChatStore) -> None:
        """Unicode, NUL, floats, big ints, bytes, tool calls, unknown roles and blocks survive.

        If this fails: a column type or encoding mangles text (JSONB drops NUL) or numbers.
        """
        messages = tricky_messages()
        for message in messages:
            store.add_message("k", message)
        assert _jsons(store.get_messages("k")) == _jsons(messages)
        store.set_messages("k2", messages)
        assert _jsons(store.get_messages("k2")) == _jsons(messages)

    def test_large_messages_round_trip(self, store: BaseChatStore) -> None:
        """A 1 MB text message and a 300-message conversation round-trip.

        If this fails: a size limit is hit silently (value splitting, batching, paging).
        """
        big = ChatMessage(role="user", content="é" * 250_000 + "x" * 500_000)
        store.add_message("big", big)
        assert _jsons(store.get_messages("big")) == _jsons([big])
        many = numbered(300)
        store.set_messages("many", many)
        assert store.count_messages("many") == 300
        assert _texts(store.get_messages("many", offset=-20)) == [f"m{i}" for i in range(280, 300)]
        assert _jsons(store.get_messages("many")) == _jsons(many)

    def test_returned_messages_are_copies(self, store: BaseChatStore) -> None:
        """Changing a message after add, or a message/list returned, never changes the store.

        If this fails: the store keeps or hands out its internal objects.
        """
        original = ChatMessage(content="orig", additional_kwargs={"n": [1]})
        store.add_message("k", original)
        original.additional_kwargs["n"].append(2)
        original.blocks.append(TextBlock(text="added"))
        got = store.get_messages("k")
        got[0].additional_kwargs["n"].append(3)
        got[0].blocks[0] = TextBlock(text="changed")
        got.append(ChatMessage(content="extra"))
        again = store.get_messages("k")
        assert _jsons(again) == _jsons([ChatMessage(content="orig", additional_kwargs={"n": [1]})])

    # -- persistence and sharing -----------------------------------------------------------

    @requires(Capability.PERSISTENT)
    def test_data_survives_a_new_instance(
        self, store: BaseChatStore, store_factory: Callable[[], BaseChatStore]
    ) -> None:
        """A new instance over the same storage reads what the first wrote.

        If this fails: writes are buffered, or the factory points elsewhere.
        """
        store.add_messages("k", tricky_messages())
        with store_factory() as again:
            assert _jsons(again.get_messages("k")) == _jsons(store.get_messages("k"))
            assert "k" in again.get_keys()

    def test_concurrent_threads_lose_nothing(self, store: BaseChatStore) -> None:
        """Threads appending to one key lose no message and keep each writer's order.

        If this fails: append is read-modify-write instead of atomic, or the store is not
        thread-safe.
        """
        writers, per_writer = 4, 15
        barrier = threading.Barrier(writers)

        def write(w: int) -> None:
            barrier.wait(timeout=30)
            for i in range(per_writer):
                store.add_message("k", ChatMessage(content=f"w{w}-{i}"))

        with concurrent.futures.ThreadPoolExecutor(writers) as pool:
            list(pool.map(write, range(writers)))
        texts = _texts(store.get_messages("k"))
        assert len(texts) == writers * per_writer
        for w in range(writers):
            assert [t for t in texts if t and t.startswith(f"w{w}-")] == [
                f"w{w}-{i}" for i in range(per_writer)
            ]

    def test_concurrent_pops_never_share(self, store: BaseChatStore) -> None:
        """Concurrent delete_last_message calls never return the same message.

        If this fails: the pop reads then deletes without atomicity.
        """
        store.add_messages("k", numbered(40))
        barrier = threading.Barrier(4)

        def pop() -> list[str | None]:
            barrier.wait(timeout=30)
            got = []
            while (message := store.delete_last_message("k")) is not None:
                got.append(message.content)
            return got

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = [f.result() for f in [pool.submit(pop) for _ in range(4)]]
        popped = [t for r in results for t in r]
        assert sorted(popped, key=str) == sorted([f"m{i}" for i in range(40)], key=str)

    def test_concurrent_deletes_by_index_never_share(self, store: BaseChatStore) -> None:
        """Concurrent delete_message(key, 0) calls each remove a different message, oldest first.

        If this fails: delete by index reads the element and removes it in two steps.
        """
        store.add_messages("k", numbered(40))
        barrier = threading.Barrier(4)

        def delete_first() -> list[str | None]:
            barrier.wait(timeout=30)
            got = []
            while (message := store.delete_message("k", 0)) is not None:
                got.append(message.content)
            return got

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = [f.result() for f in [pool.submit(delete_first) for _ in range(4)]]
        for got in results:
            assert got == sorted(got, key=lambda t: int(str(t)[1:]))
        popped = [t for r in results for t in r]
        assert sorted(popped, key=str) == sorted([f"m{i}" for i in range(40)], key=str)

    @requires(Capability.SHARED)
    def test_processes_append_and_pop(
        self, store: BaseChatStore, store_factory: Callable[[], BaseChatStore]
    ) -> None:
        """Several processes appending then popping one key lose and duplicate nothing.

        If this fails: appends are not atomic across clients, or pops race.
        """
        writers, per_writer = 3, 20
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(writers, mp_context=context) as pool:
            list(pool.map(_workers.append_many, [store_factory] * writers, ["k"] * writers,
                          range(writers), [per_writer] * writers))  # fmt: skip
            texts = _texts(store.get_messages("k"))
            assert len(texts) == writers * per_writer
            for w in range(writers):
                mine = [t for t in texts if t and t.startswith(f"w{w}-")]
                assert mine == [f"w{w}-{i}" for i in range(per_writer)]
            results = list(pool.map(_workers.pop_until_empty, [store_factory] * writers,
                                    ["k"] * writers))  # fmt: skip
        popped = [t for r in results for t in r]
        assert sorted(popped) == sorted(t for t in texts if t)
        assert store.count_messages("k") == 0

    def test_concurrent_history_is_linearizable(
        self, store: BaseChatStore, store_factory: Callable[[], BaseChatStore]
    ) -> None:
        """Concurrent random calls of every kind on one key are explained by a sequential order.

        Clients (processes with their own instance when the store is SHARED, else threads on
        one) append, insert, pop, delete by position, delete the oldest, replace, delete all,
        read and count at once; some order of the calls consistent with real time must
        explain every result, and afterwards count, messages and keys must agree.
        ``CHAT_STORE_HISTORY_SCALE=20`` runs 20 times as many rounds (a soak).

        If this fails: the printed history shows calls no order explains. Typically two
        operations lock in different orders or not at all (an insert renumbering rows a pop
        skips, an append landing while a delete removes the conversation), or a write is
        planned on a stale read.
        """
        report = history.run_histories(store, store_factory)
        print(
            f"history: {report.rounds} rounds, {report.calls} calls checked in "
            f"{report.seconds:.1f} s (seed {report.seed})"
        )
        if report.failure is not None:
            pytest.fail(f"concurrent history check failed, {report.failure}", pytrace=False)

    # -- faults ----------------------------------------------------------------------------

    @requires(Capability.EXACTLY_ONCE)
    @pytest.mark.parametrize("api", ["sync", "async"])
    @pytest.mark.parametrize("kind", list(FaultKind), ids=lambda k: k.name.lower())
    @pytest.mark.parametrize("change", sorted(changes.CHANGES))
    def test_a_change_cut_anywhere_applies_once(
        self,
        store: BaseChatStore,
        proxied_store: BaseChatStore,
        fault_proxy: FaultProxy,
        change: str,
        kind: FaultKind,
        api: str,
    ) -> None:
        """Each request of each change, cut in turn, leaves the conversation as one application.

        A proxy between the store and its server drops the request before the server sees
        it, drops the server's reply after the change was applied, or stalls it; one run per
        request the change makes. The call must succeed (the store retries) and return what
        one application returns; the conversation must hold exactly one application.

        If this fails: a retried change is not recognized by its operation id (a duplicate
        after a lost reply), a conditional write takes the store's own committed retry for a
        conflict, or a transient failure is not retried.
        """
        cuts = changes.check_every_cut(
            store, proxied_store, fault_proxy, change, kind, asynchronous=api == "async"
        )
        assert cuts >= 1, f"{change} made no request through the proxy: is the store behind it?"

    @requires(Capability.EXACTLY_ONCE, Capability.SHARED)
    def test_concurrent_history_under_faults_is_linearizable(
        self,
        store: BaseChatStore,
        fault_proxy: FaultProxy,
        store_factory_at: Callable[[str, int], Callable[[], BaseChatStore]],
    ) -> None:
        """The concurrent history check with a few percent of requests or replies dropped.

        Every client talks to the server through the proxy, which drops each request or
        reply with a small probability; a call may raise ``BackendUnavailableError`` only
        when its retries ran out, and every result must still be explained by one order.

        If this fails: as for the history check, or a retried change applied twice.
        """
        seed = history.seed_from_environment()
        faults = [
            fault_proxy.inject(
                kind, times=None, probability=FAULT_RATE / 2, seed=f"{seed}:{kind.name}"
            )
            for kind in (FaultKind.DROP_REQUEST, FaultKind.DROP_REPLY)
        ]
        report = history.run_histories(
            store,
            store_factory_at(fault_proxy.host, fault_proxy.port),
            seed=seed,
            tolerated=(BackendUnavailableError.__name__,),
        )
        print(
            f"history under faults: {report.rounds} rounds, {report.calls} calls checked in "
            f"{report.seconds:.1f} s (seed {report.seed}; {sum(f.fired for f in faults)} of "
            f"{fault_proxy.requests} requests cut)"
        )
        if report.failure is not None:
            pytest.fail(f"history check under faults failed, {report.failure}", pytrace=False)

    # -- async -----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_async_api(self, store: BaseChatStore) -> None:
        """Every a* method behaves like its sync twin.

        If this fails: an async override diverges from the sync implementation.
        """
        await store.aadd_message("k", ChatMessage(content="m1"))
        await store.aadd_messages("k", [ChatMessage(content="m2"), ChatMessage(content="m3")])
        await store.aadd_message("k", ChatMessage(content="m0"), idx=0)
        assert _texts(await store.aget_messages("k")) == ["m0", "m1", "m2", "m3"]
        assert _texts(await store.aget_messages("k", offset=-2, limit=1)) == ["m2"]
        assert await store.acount_messages("k") == 4
        assert await store.aget_keys() == ["k"]
        assert [k async for k in store.aiter_keys()] == ["k"]
        assert _texts([await store.adelete_message("k", 1)]) == ["m1"]  # type: ignore[list-item]
        assert _texts([await store.adelete_last_message("k")]) == ["m3"]  # type: ignore[list-item]
        assert _texts(await store.adelete_oldest_messages("k", 1)) == ["m0"]
        await store.aset_messages("k", numbered(2))
        assert _texts(await store.adelete_messages("k")) == ["m0", "m1"]
        assert await store.adelete_messages("k") is None
        assert await store.adelete_last_message("k") is None
        with pytest.raises(InvalidKeyError):
            await store.aget_messages("")
        with pytest.raises(InvalidMessageError):
            await store.aadd_message("k", "not a message")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="limit"):
            await store.aget_messages("k", limit=-1)
        await store.aadd_messages("k", [])
        await store.aclear()
        assert await store.aget_keys() == []

    @pytest.mark.asyncio
    async def test_async_payloads_round_trip(self, store: BaseChatStore) -> None:
        """The async path stores and reads every block type and tricky payload unchanged.

        If this fails: the async driver path serializes differently from the sync one.
        """
        messages = every_block_type() + tricky_messages()
        await store.aset_messages("k", messages)
        assert _jsons(await store.aget_messages("k")) == _jsons(messages)

    @pytest.mark.asyncio
    async def test_async_aliases_delegate(self, store: BaseChatStore) -> None:
        """LlamaIndex's async_X names reach the a* methods.

        If this fails: an async_X alias was overridden or the base class is broken.
        """
        await store.async_add_message("k", ChatMessage(content="a"))
        await store.async_add_messages("k", [ChatMessage(content="b")])
        await store.async_set_messages("k", numbered(3))
        assert _texts(await store.async_get_messages("k")) == ["m0", "m1", "m2"]
        assert await store.async_count_messages("k") == 3
        assert await store.async_get_keys() == ["k"]
        assert _texts([await store.async_delete_message("k", 0)]) == ["m0"]  # type: ignore[list-item]
        assert _texts([await store.async_delete_last_message("k")]) == ["m2"]  # type: ignore[list-item]
        assert _texts(await store.async_delete_oldest_messages("k", 5)) == ["m1"]
        await store.async_add_message("k", ChatMessage(content="z"))
        assert _texts(await store.async_delete_messages("k")) == ["z"]

    @pytest.mark.asyncio
    async def test_async_concurrent_appends(self, store: BaseChatStore) -> None:
        """Concurrent coroutines appending lose nothing and keep each writer's order.

        If this fails: async appends are read-modify-write or share a connection unsafely.
        """

        async def write(w: int) -> None:
            for i in range(10):
                await store.aadd_message("k", ChatMessage(content=f"w{w}-{i}"))

        await asyncio.gather(*(write(w) for w in range(4)))
        texts = _texts(await store.aget_messages("k"))
        assert len(texts) == 40
        for w in range(4):
            assert [t for t in texts if t and t.startswith(f"w{w}-")] == [
                f"w{w}-{i}" for i in range(10)
            ]

    def test_usable_from_several_event_loops_and_a_thread(self, store: BaseChatStore) -> None:
        """One store works from two asyncio.run loops in turn and from a worker thread.

        If this fails: an async client is bound to the first event loop that used it.
        """
        asyncio.run(store.aadd_message("k", ChatMessage(content="loop1")))
        asyncio.run(store.aadd_message("k", ChatMessage(content="loop2")))
        store.add_message("k", ChatMessage(content="sync"))

        def in_thread() -> list[str | None]:
            asyncio.run(store.aadd_message("k", ChatMessage(content="thread")))
            return _texts(asyncio.run(store.aget_messages("k")))

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            seen = pool.submit(in_thread).result(timeout=60)
        assert seen == ["loop1", "loop2", "sync", "thread"]
        assert _texts(store.get_messages("k")) == seen

    # -- lifecycle, configuration, faults ---------------------------------------------------

    def test_close_and_reuse(self, store: BaseChatStore) -> None:
        """close() releases resources; the context manager closes; reuse reconnects.

        If this fails: close leaves the store unusable or raises on a second call.
        """
        store.add_message("k", ChatMessage(content="x"))
        store.close()
        store.close()
        assert store.count_messages("k") == 1
        with store as same:
            assert same is store
        assert store.count_messages("k") == 1

    @pytest.mark.asyncio
    async def test_aclose_and_reuse(self, store: BaseChatStore) -> None:
        """aclose() releases async resources; the async context manager closes.

        If this fails: aclose leaves the store unusable.
        """
        await store.aadd_message("k", ChatMessage(content="x"))
        async with store as same:
            assert same is store
        await store.aclose()
        assert await store.acount_messages("k") == 1

    def test_config_round_trip_without_secrets(
        self, store: BaseChatStore, secrets: dict[str, str]
    ) -> None:
        """to_dict carries class_name, no secret; from_dict(+secrets) rebuilds a working store.

        If this fails: a secret field is a plain str, or a field cannot be rebuilt.
        """
        data = store.to_dict()
        assert data["class_name"] == type(store).class_name()
        shown = [repr(store), str(store), str(data), store.model_dump_json()]
        for name, secret in secrets.items():
            for text in shown:
                assert secret not in text, f"secret {name!r} leaks"
        store.add_message("k", ChatMessage(content="x"))
        with type(store).from_dict(data, **secrets) as rebuilt:
            rebuilt.count_messages("k")
            if Capability.PERSISTENT in store.capabilities:
                assert rebuilt.count_messages("k") == 1

    def test_pickling_is_refused_or_carries_no_secret(
        self, store: BaseChatStore, secrets: dict[str, str]
    ) -> None:
        """Pickling is refused with a TypeError naming to_dict, or carries data, no secret.

        If this fails: pickling leaks a password, or fails with an obscure driver error
        (an unpicklable lock or client) instead of saying how to move a store.
        """
        store.add_message("k", ChatMessage(content="x"))
        try:
            data = pickle.dumps(store)
        except TypeError as exc:
            refusal = str(exc)
            assert "to_dict" in refusal
            return
        for name, secret in secrets.items():
            assert secret.encode() not in data, f"secret {name!r} is in the pickle"
        assert pickle.loads(data).get_messages("k") == store.get_messages("k")  # noqa: S301

    @requires(Capability.SHARED)
    def test_unreachable_server_raises(self, unreachable_store: BaseChatStore) -> None:
        """A dead server raises BackendUnavailableError (sync and async), naming no password.

        If this fails: the driver's own exception leaks out, or the call hangs.
        """
        with pytest.raises(BackendUnavailableError):
            unreachable_store.get_messages("k")
        with pytest.raises(BackendUnavailableError):
            unreachable_store.add_message("k", ChatMessage(content="x"))
        with pytest.raises(BackendUnavailableError):
            asyncio.run(unreachable_store.aget_messages("k"))

    # -- expiry ----------------------------------------------------------------------------

    @requires(Capability.TTL)
    def test_ttl_expires_whole_conversation(
        self, ttl_store_factory: Callable[[int], BaseChatStore]
    ) -> None:
        """A conversation not changed for ttl seconds is gone from reads, counts and keys.

        If this fails: expiry is not set on every write, or reads do not filter expired data.
        """
        store = ttl_store_factory(1)
        store.add_messages("k", numbered(3))
        assert store.count_messages("k") == 3
        _wait_until(lambda: store.count_messages("k") == 0, timeout=6)
        assert store.get_messages("k") == []
        assert store.get_keys() == []

    @requires(Capability.TTL)
    def test_ttl_slides_on_every_change(
        self, ttl_store_factory: Callable[[int], BaseChatStore]
    ) -> None:
        """Every change, deletes included, pushes the expiry to now + ttl.

        If this fails: only the first write sets the expiry, or a delete drops it.
        """
        store = ttl_store_factory(3)
        store.add_messages("k", numbered(4))
        started = time.monotonic()
        for _ in range(3):
            time.sleep(1.2)
            store.delete_message("k", 0)
            store.add_message("k", ChatMessage(content="again"))
        assert time.monotonic() - started > 3.5
        assert store.count_messages("k") == 4
        assert store.get_keys() == ["k"]

    @requires(Capability.TTL)
    def test_ttl_refresh_on_read(
        self, store: BaseChatStore, ttl_store_factory: Callable[..., BaseChatStore]
    ) -> None:
        """Reads slide the expiry only with refresh_on_read=True, and never revive a dead chat.

        If this fails: get_messages or count_messages does not refresh the expiry (or not
        the one get_keys reads), reads refresh without being asked to, or a read of an
        expired conversation brings it back.
        """
        if "refresh_on_read" not in type(store).model_fields:
            pytest.skip(f"{type(store).__name__} has no refresh_on_read option")
        try:
            reader = ttl_store_factory(2, refresh_on_read=True)
        except TypeError as exc:
            pytest.fail(f"ttl_store_factory must take options, factory(seconds, **options): {exc}")
        plain = ttl_store_factory(2)
        reader.add_messages("k", numbered(2))
        plain.add_messages("p", numbered(2))

        def get() -> None:
            reader.get_messages("k", offset=-1)
            plain.get_messages("p", offset=-1)

        def count() -> None:
            reader.count_messages("k")

        # Each phase outlasts ttl plus a second of rounding (some backends keep whole
        # seconds), so the conversation survives it only if that phase's reads refresh it.
        for read in (get, count):
            for _ in range(4):
                time.sleep(0.8)
                read()
            assert plain.count_messages("p") == 0
            assert reader.get_keys() == ["k"]
        assert reader.count_messages("k") == 2
        time.sleep(3.2)  # no reads: it expires
        assert reader.count_messages("k") == 0
        assert reader.get_messages("k") == []
        assert reader.get_keys() == []


def _wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached within {timeout} s"
        time.sleep(0.1)
