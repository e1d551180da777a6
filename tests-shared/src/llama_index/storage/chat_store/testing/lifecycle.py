"""Suite tests of the async API, the store's life cycle and expiry.

Mixed into :class:`~llama_index.storage.chat_store.testing.conformance.ChatStoreConformance`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import pickle
import time
import warnings
from collections.abc import Callable

import pytest

from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    BaseChatStore,
    Capability,
    ChatMessage,
    InvalidKeyError,
    InvalidMessageError,
)
from llama_index.storage.chat_store.testing.gates import requires
from llama_index.storage.chat_store.testing.samples import (
    every_block_type,
    jsons,
    numbered,
    texts,
    tricky_messages,
)

__all__ = ["AsyncTests", "LifecycleTests"]


class AsyncTests:
    """Every a* method and LlamaIndex's async_X names; several event loops."""

    # -- async -----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_async_api(self, store: BaseChatStore) -> None:
        """Every a* method behaves like its sync twin.

        If this fails: an async override diverges from the sync implementation.
        """
        await store.aadd_message("k", ChatMessage(content="m1"))
        await store.aadd_messages("k", [ChatMessage(content="m2"), ChatMessage(content="m3")])
        await store.aadd_message("k", ChatMessage(content="m0"), idx=0)
        assert texts(await store.aget_messages("k")) == ["m0", "m1", "m2", "m3"]
        assert texts(await store.aget_messages("k", offset=-2, limit=1)) == ["m2"]
        assert await store.acount_messages("k") == 4
        assert await store.aget_keys() == ["k"]
        assert [k async for k in store.aiter_keys()] == ["k"]
        assert texts([await store.adelete_message("k", 1)]) == ["m1"]  # type: ignore[list-item]
        assert texts([await store.adelete_last_message("k")]) == ["m3"]  # type: ignore[list-item]
        assert texts(await store.adelete_oldest_messages("k", 1)) == ["m0"]
        await store.aset_messages("k", numbered(2))
        assert texts(await store.adelete_messages("k")) == ["m0", "m1"]
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
        assert jsons(await store.aget_messages("k")) == jsons(messages)

    @pytest.mark.asyncio
    async def test_async_aliases_delegate(self, store: BaseChatStore) -> None:
        """LlamaIndex's async_X names reach the a* methods.

        If this fails: an async_X alias was overridden or the base class is broken.
        """
        await store.async_add_message("k", ChatMessage(content="a"))
        await store.async_add_messages("k", [ChatMessage(content="b")])
        await store.async_set_messages("k", numbered(3))
        assert texts(await store.async_get_messages("k")) == ["m0", "m1", "m2"]
        assert await store.async_count_messages("k") == 3
        assert await store.async_get_keys() == ["k"]
        assert texts([await store.async_delete_message("k", 0)]) == ["m0"]  # type: ignore[list-item]
        assert texts([await store.async_delete_last_message("k")]) == ["m2"]  # type: ignore[list-item]
        assert texts(await store.async_delete_oldest_messages("k", 5)) == ["m1"]
        await store.async_add_message("k", ChatMessage(content="z"))
        assert texts(await store.async_delete_messages("k")) == ["z"]

    @pytest.mark.asyncio
    async def test_async_concurrent_appends(self, store: BaseChatStore) -> None:
        """Concurrent coroutines appending lose nothing and keep each writer's order.

        If this fails: async appends are read-modify-write or share a connection unsafely.
        """

        async def write(w: int) -> None:
            for i in range(10):
                await store.aadd_message("k", ChatMessage(content=f"w{w}-{i}"))

        await asyncio.gather(*(write(w) for w in range(4)))
        written = texts(await store.aget_messages("k"))
        assert len(written) == 40
        for w in range(4):
            assert [t for t in written if t and t.startswith(f"w{w}-")] == [
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
            return texts(asyncio.run(store.aget_messages("k")))

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            seen = pool.submit(in_thread).result(timeout=60)
        assert seen == ["loop1", "loop2", "sync", "thread"]
        assert texts(store.get_messages("k")) == seen

    def test_a_finished_event_loop_leaves_no_connection_open(self, store: BaseChatStore) -> None:
        """What a store opened for an ``asyncio.run`` loop is closed when that loop ends.

        The loop shuts down, then the store is closed and garbage collected: no
        ``ResourceWarning`` about an unclosed connection, transport, socket or client. If this
        fails: the store keeps a dead loop's connections until they are collected (their
        sockets stay open meanwhile and can no longer be closed politely); close them when
        the loop shuts down (core's ``PerLoop(..., aclose=...)``).
        """
        gc.collect()  # what earlier tests left for the collector is not this store's
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            asyncio.run(store.aadd_message("k", ChatMessage(content="x")))
            asyncio.run(store.acount_messages("k"))
            store.close()
            gc.collect()
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert unclosed == []
        assert store.count_messages("k") == 1


class LifecycleTests:
    """Closing, configuration and pickling without secrets, a dead server, expiry."""

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
    @pytest.mark.parametrize("flag", [True, False])
    def test_a_bool_ttl_is_an_error(
        self, ttl_store_factory: Callable[..., BaseChatStore], flag: bool
    ) -> None:
        """``ttl=True`` (meaning "expire", or a typo) is refused, not read as one second.

        If this fails: pydantic's lax mode took the bool for 1 (every conversation would
        expire a second after its last change) or 0; guard the field with core's
        ``NOT_BOOL``.
        """
        with pytest.raises(ValueError, match="ttl"):  # pydantic's ValidationError, or ours
            ttl_store_factory(flag)

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
