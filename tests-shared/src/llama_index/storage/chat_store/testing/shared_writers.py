"""Several store instances over the same storage writing one conversation.

A store may remember what it last saw of a conversation (a version, an ETag) to plan its
next write without reading first. These tests make that memory stale on purpose: another
instance appends, pops, replaces or deletes behind it, and every result must still be
exactly what a store that reads before each write would give. Add :class:`SharedWriterTests`
to a backend's conformance class (it uses the ``store`` and ``store_factory`` fixtures)::

    class TestAzureNativeConformance(ChatStoreConformance, SharedWriterTests): ...
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator

import pytest

from llama_index.storage.chat_store.core import BaseChatStore, Capability, ChatMessage
from llama_index.storage.chat_store.testing.conformance import requires
from llama_index.storage.chat_store.testing.samples import numbered

__all__ = ["SharedWriterTests"]

_BIG = 150  # more messages than one transaction or batch holds on the table stores


def _texts(messages: list[ChatMessage] | None) -> list[str]:
    return [str(m.content) for m in messages or []]


def _change(store: BaseChatStore, change: str, model: list[str]) -> None:
    """Apply ``change`` to conversation ``k`` through ``store`` and to ``model`` alike."""
    if change == "append":
        store.add_message("k", ChatMessage(content="other"))
        model.append("other")
    elif change == "pop":
        assert _texts([m for m in [store.delete_last_message("k")] if m]) == model[-1:]
        del model[-1:]
    elif change == "replace":
        store.set_messages("k", numbered(2, "r"))
        model[:] = ["r0", "r1"]
    elif change == "replace_big":
        store.set_messages("k", numbered(_BIG, "b"))
        model[:] = [f"b{i}" for i in range(_BIG)]
    elif change == "delete_all":
        assert _texts(store.delete_messages("k")) == model
        model.clear()
    elif change == "delete_oldest":
        assert _texts(store.delete_oldest_messages("k", 1)) == model[:1]
        del model[:1]
    else:  # pragma: no cover (a typo in a parametrization)
        raise AssertionError(change)


def _write(store: BaseChatStore, op: str, model: list[str]) -> None:
    """Run write ``op`` on conversation ``k`` through ``store`` and on ``model`` alike."""
    if op == "append":
        store.add_message("k", ChatMessage(content="mine"))
        model.append("mine")
    elif op == "append_many":
        store.add_messages("k", numbered(2, "many"))
        model.extend(["many0", "many1"])
    elif op == "pop":
        assert _texts([m for m in [store.delete_last_message("k")] if m]) == model[-1:]
        del model[-1:]
    elif op == "replace":
        store.set_messages("k", numbered(3, "s"))
        model[:] = ["s0", "s1", "s2"]
    elif op == "insert_front":
        store.add_message("k", ChatMessage(content="front"), idx=0)
        model.insert(0, "front")
    elif op == "delete_second":
        removed = store.delete_message("k", 1)
        assert _texts([removed] if removed else []) == model[1:2]
        del model[1:2]
    elif op == "delete_oldest":
        assert _texts(store.delete_oldest_messages("k", 1)) == model[:1]
        del model[:1]
    else:  # pragma: no cover (a typo in a parametrization)
        raise AssertionError(op)


class SharedWriterTests:
    """Two instances (so two memories of the conversation) writing the same key."""

    @pytest.fixture
    def second(self, store_factory: Callable[[], BaseChatStore]) -> Iterator[BaseChatStore]:
        """Another instance over the same storage as ``store``."""
        with store_factory() as second:
            yield second

    @pytest.fixture
    def observer(self, store_factory: Callable[[], BaseChatStore]) -> Iterator[BaseChatStore]:
        """A third instance that only reads (so the writers' memories stay as they are)."""
        with store_factory() as observer:
            yield observer

    @requires(Capability.SHARED)
    @pytest.mark.parametrize(
        "change", ["append", "pop", "replace", "replace_big", "delete_all", "delete_oldest"]
    )
    @pytest.mark.parametrize(
        "op",
        ["append", "append_many", "pop", "replace", "insert_front", "delete_second",
         "delete_oldest"],
    )  # fmt: skip
    def test_write_after_another_instance_changed_the_conversation(
        self,
        store: BaseChatStore,
        second: BaseChatStore,
        observer: BaseChatStore,
        change: str,
        op: str,
    ) -> None:
        """A write right after another instance changed the conversation acts on the change.

        The first instance writes (so it knows the conversation), the second changes it, the
        first writes again without reading in between.

        If this fails: a write was planned on remembered state and committed although that
        state was stale (the commit is not conditional on it), or the retry after the
        conflict reuses the stale state.
        """
        model = ["m0", "m1", "m2"]
        store.add_messages("k", numbered(3))
        _change(second, change, model)
        _write(store, op, model)
        assert _texts(observer.get_messages("k")) == model
        assert observer.count_messages("k") == len(model)
        assert ("k" in observer.get_keys()) == bool(model)

    @requires(Capability.SHARED)
    def test_instances_take_turns(
        self, store: BaseChatStore, second: BaseChatStore, observer: BaseChatStore
    ) -> None:
        """Two instances writing one conversation by turns each see the other's changes.

        If this fails: an instance wrote on a stale view of the conversation (lost or
        duplicated messages, a pop returning a message the other already popped).
        """
        model: list[str] = []
        turns = [
            (store, "append"), (second, "append"), (store, "append_many"), (second, "pop"),
            (store, "pop"), (second, "insert_front"), (store, "append"), (second, "replace"),
            (store, "append"), (second, "delete_second"), (store, "delete_oldest"),
            (second, "append"), (store, "pop"), (second, "append_many"), (store, "replace"),
            (second, "pop"), (store, "pop"), (second, "pop"), (store, "pop"), (second, "append"),
        ]  # fmt: skip
        for writer, op in turns:
            _write(writer, op, model)
            assert _texts(observer.get_messages("k")) == model, (op, model)

    @requires(Capability.SHARED)
    def test_instances_append_and_pop_concurrently(
        self, store: BaseChatStore, second: BaseChatStore, observer: BaseChatStore
    ) -> None:
        """Threads on two instances append then pop one key: nothing lost, nothing shared.

        If this fails: a write committed on one instance's stale view of the conversation.
        """
        writers, per_writer = 4, 12
        barrier = threading.Barrier(writers)
        instances = [store, second]

        def append(w: int) -> None:
            barrier.wait(timeout=30)
            for i in range(per_writer):
                instances[w % 2].add_message("k", ChatMessage(content=f"w{w}-{i}"))

        def pop(w: int) -> list[str]:
            barrier.wait(timeout=30)
            got = []
            while (message := instances[w % 2].delete_last_message("k")) is not None:
                got.append(str(message.content))
            return got

        with concurrent.futures.ThreadPoolExecutor(writers) as pool:
            list(pool.map(append, range(writers)))
            texts = _texts(observer.get_messages("k"))
            assert len(texts) == writers * per_writer
            for w in range(writers):
                mine = [t for t in texts if t.startswith(f"w{w}-")]
                assert mine == [f"w{w}-{i}" for i in range(per_writer)]
            popped = [t for got in pool.map(pop, range(writers)) for t in got]
        assert sorted(popped) == sorted(texts)
        assert observer.count_messages("k") == 0

    @requires(Capability.SHARED)
    def test_appends_race_replaces_on_another_instance(
        self, store: BaseChatStore, second: BaseChatStore, observer: BaseChatStore
    ) -> None:
        """Appends on one instance racing replaces on another leave one whole replace, then appends.

        If this fails: an append landed in a generation a replace had already retired, or a
        replace mixed with an append (readers must see one whole conversation).
        """
        rounds = 8
        barrier = threading.Barrier(2)

        def append() -> None:
            barrier.wait(timeout=30)
            for i in range(3 * rounds):
                store.add_message("k", ChatMessage(content=f"a{i}"))

        def replace() -> None:
            barrier.wait(timeout=30)
            for j in range(rounds):
                second.set_messages("k", numbered(3, f"r{j}-"))

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(append), pool.submit(replace)]:
                future.result()
        texts = _texts(observer.get_messages("k"))
        last = rounds - 1
        assert texts[:3] == [f"r{last}-{i}" for i in range(3)]
        appended = [int(t[1:]) for t in texts[3:]]
        assert all(t.startswith("a") for t in texts[3:])
        assert appended == sorted(set(appended))

    @requires(Capability.SHARED)
    @pytest.mark.asyncio
    async def test_async_instances_append_concurrently(
        self, store: BaseChatStore, second: BaseChatStore, observer: BaseChatStore
    ) -> None:
        """Tasks on two instances appending to one key lose nothing and keep their order.

        If this fails: async writes commit on a stale view shared between tasks.
        """

        async def append(w: int) -> None:
            for i in range(10):
                await (store, second)[w % 2].aadd_message("k", ChatMessage(content=f"w{w}-{i}"))

        await asyncio.gather(*(append(w) for w in range(4)))
        texts = _texts(await observer.aget_messages("k"))
        assert len(texts) == 40
        for w in range(4):
            assert [t for t in texts if t.startswith(f"w{w}-")] == [f"w{w}-{i}" for i in range(10)]
