"""Suite tests of persistence, sharing and faults: concurrent writers lose nothing.

Mixed into :class:`~llama_index.storage.chat_store.testing.conformance.ChatStoreConformance`:
threads, processes and store instances on one conversation, the concurrent history check
(:mod:`.history_runs`), and every change cut by a fault proxy.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
from collections.abc import Callable

import pytest

from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    BaseChatStore,
    Capability,
    ChatMessage,
)
from llama_index.storage.chat_store.testing import _workers, changes, history_runs
from llama_index.storage.chat_store.testing.faults import FaultKind, FaultProxy
from llama_index.storage.chat_store.testing.gates import requires
from llama_index.storage.chat_store.testing.samples import (
    jsons,
    numbered,
    texts,
    tricky_messages,
)

__all__ = ["FAULT_RATE", "SharingTests"]


FAULT_RATE = 0.04
"""The share of requests (half before the server, half after it answered) the history check
under faults drops."""


class SharingTests:
    """Persistence, concurrent writers and readers, and faults between store and server."""

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
            assert jsons(again.get_messages("k")) == jsons(store.get_messages("k"))
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
        written = texts(store.get_messages("k"))
        assert len(written) == writers * per_writer
        for w in range(writers):
            assert [t for t in written if t and t.startswith(f"w{w}-")] == [
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
            written = texts(store.get_messages("k"))
            assert len(written) == writers * per_writer
            for w in range(writers):
                mine = [t for t in written if t and t.startswith(f"w{w}-")]
                assert mine == [f"w{w}-{i}" for i in range(per_writer)]
            results = list(pool.map(_workers.pop_until_empty, [store_factory] * writers,
                                    ["k"] * writers))  # fmt: skip
        popped = [t for r in results for t in r]
        assert sorted(popped) == sorted(t for t in written if t)
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
        report = history_runs.run_histories(store, store_factory)
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
        seed = history_runs.seed_from_environment()
        faults = [
            fault_proxy.inject(
                kind, times=None, probability=FAULT_RATE / 2, seed=f"{seed}:{kind.name}"
            )
            for kind in (FaultKind.DROP_REQUEST, FaultKind.DROP_REPLY)
        ]
        report = history_runs.run_histories(
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
