"""Suite tests of the conversation catalog (``Capability.CATALOG``; see ``core.catalog``).

Mixed into :class:`~llama_index.storage.chat_store.testing.conformance.ChatStoreConformance`;
a store without the capability skips them, and must raise ``CapabilityNotSupportedError``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from llama_index.storage.chat_store.core import (
    BaseChatStore,
    Capability,
    CapabilityNotSupportedError,
    ChatMessage,
    ConversationNotFoundError,
    PayloadTooLargeError,
)
from llama_index.storage.chat_store.core.catalog import MAX_METADATA_BYTES, ConversationInfo
from llama_index.storage.chat_store.testing.gates import requires

__all__ = ["CatalogTests", "walk_catalog"]

_SKEW = timedelta(minutes=5)
"""How far a server's clock may be from this machine's for the times to count as "now"."""


def _message(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def walk_catalog(store: BaseChatStore, prefix: str | None = None, limit: int = 7) -> list[str]:
    """Every key ``list_conversations`` lists, page by page until ``next_after`` is None."""
    keys: list[str] = []
    after = None
    for _ in range(10_000):
        page = store.list_conversations(prefix=prefix, after=after, limit=limit)
        assert len(page.conversations) <= limit
        keys += [c.key for c in page.conversations]
        if page.next_after is None:
            return keys
        after = page.next_after
    raise AssertionError("the listing never ended")


def _now_ish(moment: datetime | None) -> None:
    assert moment is not None
    assert moment.tzinfo is not None
    assert abs(moment - datetime.now(timezone.utc)) < _SKEW


class CatalogTests:
    """``list_conversations``, ``get_conversation``, ``set_metadata`` and their async twins."""

    def test_catalog_missing_is_an_error_not_a_guess(self, store: BaseChatStore) -> None:
        """A store without the capability says so; one with it reports it.

        If this fails: a store without a catalog returned something, or one with a catalog
        does not report Capability.CATALOG.
        """
        if Capability.CATALOG in store.capabilities:
            assert store.list_conversations().conversations == []
            return
        with pytest.raises(CapabilityNotSupportedError, match="catalog"):
            store.list_conversations()
        with pytest.raises(CapabilityNotSupportedError):
            store.get_conversation("k")
        with pytest.raises(CapabilityNotSupportedError):
            store.set_metadata("k", {"title": "x"})

    @requires(Capability.CATALOG)
    def test_catalog_entry_follows_the_conversation(self, store: BaseChatStore) -> None:
        """Count and times follow every change; emptying removes the entry; a new one starts over.

        If this fails: the entry's count lags, created_at moves on later changes, updated_at
        does not, or an emptied conversation keeps (or passes on) its entry.
        """
        assert store.get_conversation("k") is None
        store.add_message("k", _message("one"))
        first = store.get_conversation("k")
        assert first is not None
        assert (first.key, first.message_count, first.metadata) == ("k", 1, {})
        _now_ish(first.created_at)
        _now_ish(first.updated_at)
        store.add_messages("k", [_message("two"), _message("three")])
        store.delete_last_message("k")
        later = store.get_conversation("k")
        assert later is not None
        assert later.message_count == 2
        assert later.created_at == first.created_at
        assert later.updated_at is not None
        assert first.updated_at is not None
        assert later.updated_at >= first.updated_at
        store.set_metadata("k", {"title": "kept"})
        store.delete_oldest_messages("k", 2)
        assert store.get_conversation("k") is None
        store.set_messages("k", [_message("again")])
        again = store.get_conversation("k")
        assert again is not None
        assert (again.message_count, again.metadata) == (1, {})
        assert again.created_at is not None
        assert again.created_at >= first.created_at  # type: ignore[operator]

    @requires(Capability.CATALOG)
    def test_set_metadata_merges_atomically(self, store: BaseChatStore) -> None:
        """Metadata merges key by key (None removes), survives appends, round-trips exactly.

        If this fails: set_metadata replaced instead of merging, lost a value on an append,
        changed a value on the way (numbers, unicode, nesting), or accepted bad input.
        """
        store.add_message("k", _message("hi"))
        value = {"nested": {"list": [1, 2.5, None, True], "text": "naïve ☃ \u2028"}, "n": 10**15}
        info = store.set_metadata("k", {"title": "Trip", "extra": value})
        assert isinstance(info, ConversationInfo)
        assert info.metadata == {"title": "Trip", "extra": value}
        store.add_message("k", _message("more"))
        info = store.set_metadata("k", {"title": None, "lang": "fr"})
        assert info.metadata == {"extra": value, "lang": "fr"}
        assert info.message_count == 2
        assert store.get_conversation("k") == info
        with pytest.raises(PayloadTooLargeError, match=str(MAX_METADATA_BYTES)):
            store.set_metadata("k", {"big": "x" * MAX_METADATA_BYTES})
        with pytest.raises(TypeError):
            store.set_metadata("k", {"bad": object()})
        with pytest.raises(TypeError):
            store.set_metadata("k", ["title", "x"])  # type: ignore[arg-type]
        got = store.get_conversation("k")
        assert got is not None
        assert got.metadata == {"extra": value, "lang": "fr"}
        with pytest.raises(ConversationNotFoundError):
            store.set_metadata("missing", {"title": "x"})
        assert store.get_conversation("missing") is None

    @requires(Capability.CATALOG)
    def test_metadata_fills_up_to_the_limit_across_calls(self, store: BaseChatStore) -> None:
        """The limit holds for the merged metadata, not one call's: the merge that passes it fails.

        If this fails: metadata grew past MAX_METADATA_BYTES a piece at a time.
        """
        store.add_message("k", _message("hi"))
        half = "x" * (MAX_METADATA_BYTES // 2 - 10)
        store.set_metadata("k", {"a": half})
        with pytest.raises(PayloadTooLargeError):
            store.set_metadata("k", {"b": half + "yyyyyyyyyyyyyyyyyyyy"})
        info = store.set_metadata("k", {"a": None, "b": half})
        assert set(info.metadata) == {"b"}

    @requires(Capability.CATALOG)
    def test_list_conversations_pages_by_key(self, store: BaseChatStore) -> None:
        """Pages come in key order, each key once, filtered by prefix, with counts.

        If this fails: a page repeated or skipped a key, the order is not code point order,
        a prefix let other keys through, or the last page still gave a cursor.
        """
        keys = [f"u1/{i:02d}" for i in range(12)] + [f"u2/{i}" for i in range(5)]
        keys += ["u1", "u10/x", "ü/1", "z"]
        for n, key in enumerate(keys):
            store.add_messages(key, [_message(str(i)) for i in range(n % 3 + 1)])
        assert walk_catalog(store) == sorted(keys)
        assert walk_catalog(store, "u1/") == sorted(k for k in keys if k.startswith("u1/"))
        assert walk_catalog(store, "u1", limit=100) == sorted(k for k in keys if k.startswith("u1"))
        assert walk_catalog(store, "nothing") == []
        page = store.list_conversations(prefix="u2/", limit=100)
        assert page.next_after is None
        counts = {c.key: c.message_count for c in page.conversations}
        assert counts == {k: keys.index(k) % 3 + 1 for k in keys if k.startswith("u2/")}
        page = store.list_conversations(after="u2/3")
        assert [c.key for c in page.conversations] == ["u2/4", "z", "ü/1"]
        store.delete_messages("u2/4")
        store.delete_oldest_messages("z", 3)  # emptied by a trim
        assert [c.key for c in store.list_conversations(after="u2/3").conversations] == ["ü/1"]
        for bad, error in (({"limit": 0}, ValueError), ({"limit": "5"}, TypeError),
                           ({"prefix": 1}, TypeError), ({"after": b"u"}, TypeError)):  # fmt: skip
            with pytest.raises(error):
                store.list_conversations(**bad)

    @requires(Capability.CATALOG)
    def test_metadata_and_appends_from_several_stores_lose_nothing(
        self, store: BaseChatStore, store_factory: Callable[[], BaseChatStore]
    ) -> None:
        """Writers appending and others merging metadata at once, each on a store of its own.

        Every message lands in each writer's order, the count agrees, and the metadata holds
        exactly each tagger's last name (each merge adds one and removes its previous one);
        every other tagger goes through ``aset_metadata``.
        Stores that are not SHARED run the writers as threads on ``store``.

        If this fails: a merge rewrote the conversation's entry from a stale read (losing a
        count or another tagger's name), an append reset the metadata, or a conflict between
        the two was not retried.
        """
        shared = Capability.SHARED in store.capabilities
        store.add_message("k", _message("first"))
        writers, rounds = 3, 8
        barrier = threading.Barrier(2 * writers)
        errors: list[BaseException] = []

        def append(own: BaseChatStore, n: int, i: int) -> None:
            own.add_message("k", _message(f"{n}.{i}"))

        def tag(own: BaseChatStore, n: int, i: int) -> None:
            change = {f"w{n}.{i}": i, f"w{n}.{i - 1}": None}
            if n % 2:  # odd taggers through the async twin
                info = asyncio.run(own.aset_metadata("k", change))
            else:
                info = own.set_metadata("k", change)
            assert info is not None
            assert info.metadata[f"w{n}.{i}"] == i

        def run(work: Callable[[BaseChatStore, int, int], None], n: int) -> None:
            own = store_factory() if shared else store
            try:
                barrier.wait(timeout=120)
                for i in range(rounds):
                    work(own, n, i)
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                if own is not store:
                    own.close()

        threads = [threading.Thread(target=run, args=(work, n))
                   for n in range(writers) for work in (append, tag)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, f"{len(errors)} writers failed, the first with {errors[0]!r}"
        info = store.get_conversation("k")
        assert info is not None
        assert info.message_count == 1 + writers * rounds
        assert info.metadata == {f"w{n}.{rounds - 1}": rounds - 1 for n in range(writers)}
        contents = [m.content or "" for m in store.get_messages("k")]
        for n in range(writers):
            mine = [c for c in contents if c.startswith(f"{n}.")]
            assert mine == [f"{n}.{i}" for i in range(rounds)]

    @requires(Capability.CATALOG)
    def test_listing_is_stable_under_concurrent_writes(self, store: BaseChatStore) -> None:
        """Keys present for the whole walk are listed once while others come and go around them.

        If this fails: paging under concurrent creates, appends and deletes skipped or
        repeated a key that existed throughout.
        """
        stable = [f"s{i:03d}" for i in range(40)]
        for key in stable:
            store.add_message(key, _message("x"))
        stop = threading.Event()
        errors: list[BaseException] = []

        def churn() -> None:
            i = 0
            try:
                while not stop.is_set():
                    key = f"s{i % 40:03d}-{i % 7}"
                    store.add_message(key, _message("y"))
                    store.add_message(stable[i % 40], _message("z"))
                    if i % 2:
                        store.delete_messages(key)
                    i += 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        worker = threading.Thread(target=churn)
        worker.start()
        try:
            walks = [walk_catalog(store, "s", limit=5) for _ in range(3)]
        finally:
            stop.set()
            worker.join()
        assert not errors
        for walk in walks:
            assert len(walk) == len(set(walk))
            assert [k for k in walk if k in stable] == stable

    @requires(Capability.CATALOG)
    @pytest.mark.asyncio
    async def test_catalog_async(self, store: BaseChatStore) -> None:
        """The async twins answer as the sync methods do.

        If this fails: alist_conversations, aget_conversation or aset_metadata differ.
        """
        await store.aadd_message("a", _message("1"))
        info = await store.aset_metadata("a", {"t": 1})
        assert info.metadata == {"t": 1}
        assert await store.aget_conversation("a") == info
        page = await store.alist_conversations(prefix="a", limit=1)
        assert [c.key for c in page.conversations] == ["a"]
        assert page.next_after is None
        with pytest.raises(ConversationNotFoundError):
            await store.aset_metadata("b", {"t": 1})
