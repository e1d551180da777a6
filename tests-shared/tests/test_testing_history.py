"""The history checker accepts every correct history and rejects broken ones."""

from __future__ import annotations

import random
import textwrap
from typing import Any

import pytest

from llama_index.storage.chat_store.testing.history import (
    Call,
    apply,
    check_history,
    format_history,
    linearize,
    shrink,
)
from llama_index.storage.chat_store.testing.history_runs import plan_calls


def call(
    client: int,
    name: str,
    args: tuple[Any, ...],
    start: int,
    end: int | None,
    result: Any = None,
    error: str | None = None,
) -> Call:
    return Call(client, name, args, start, end, result, error)


def quiescent(state: list[str], at: int = 1000) -> list[Call]:
    """The reads the suite makes after every round."""
    return [
        call(-1, "get", (0, None), at, at + 1, tuple(state)),
        call(-1, "count", (), at + 2, at + 3, len(state)),
    ]


def test_model_is_a_python_list() -> None:
    state: tuple[str, ...] = ("a", "b", "c")
    assert apply(state, "insert", (-1, "x")) == (("a", "b", "x", "c"), None)
    assert apply(state, "insert", (9, "x")) == (("a", "b", "c", "x"), None)
    assert apply(state, "delete_at", (-3,)) == (("b", "c"), "a")
    assert apply(state, "delete_at", (3,)) == (state, None)
    assert apply((), "pop", ()) == ((), None)
    assert apply(state, "delete_oldest", (2,)) == (("c",), ("a", "b"))
    assert apply((), "delete_all", ()) == ((), None)
    assert apply(state, "delete_all", ()) == ((), state)
    assert apply(state, "get", (-2, None)) == (state, ("b", "c"))
    assert apply(state, "get", (1, 1)) == (state, ("b",))
    assert apply(state, "set", (("z",),)) == (("z",), None)
    with pytest.raises(ValueError, match="unknown operation"):
        apply(state, "explode", ())


def test_sequential_history_is_accepted() -> None:
    calls = [
        call(0, "append", ("a",), 0, 1),
        call(0, "insert", (0, "b"), 2, 3),
        call(0, "pop", (), 4, 5, "a"),
        call(0, "append_many", (("c", "d"),), 6, 7),
        call(0, "delete_at", (1,), 8, 9, "c"),
        call(0, "delete_oldest", (1,), 10, 11, ("b",)),
        *quiescent(["d"]),
    ]
    assert check_history([], calls) == []


def test_overlapping_calls_may_take_effect_in_either_order() -> None:
    """A pop overlapping an append may return the appended message or the one before."""
    append = call(0, "append", ("a",), 0, 10)
    popped_after = [append, call(1, "pop", (), 5, 15, "a"), *quiescent(["i0"])]
    popped_before = [append, call(1, "pop", (), 5, 15, "i0"), *quiescent(["a"])]
    assert check_history(["i0"], popped_after) == []
    assert check_history(["i0"], popped_before) == []


def test_real_time_order_is_enforced() -> None:
    """A read that starts after an append ended must see it."""
    calls = [
        call(0, "append", ("a",), 0, 10),
        call(1, "get", (0, None), 11, 12, ()),
        *quiescent(["a"]),
    ]
    assert linearize([], calls) is None
    calls[1] = call(1, "get", (0, None), 9, 12, ())  # overlapping: may precede the append
    assert linearize([], calls) is not None


def test_two_pops_returning_one_message_are_rejected() -> None:
    calls = [
        call(0, "pop", (), 0, 10, "b"),
        call(1, "pop", (), 1, 11, "b"),
        *quiescent(["a"]),
    ]
    problems = check_history(["a", "b"], calls)
    assert "message 'b' is held or returned 2 times" in problems
    assert problems[-1].startswith("no sequential order")


def test_pop_returning_a_message_that_was_not_last_is_rejected() -> None:
    """Postgres issue 14 item 1: a pop racing an insert returned the first message."""
    calls = [
        call(0, "insert", (1, "x"), 0, 10),
        call(1, "pop", (), 2, 12, "m0"),
        *quiescent(["x", "m1"]),
    ]
    assert linearize(["m0", "m1"], calls) is None


def test_count_disagreeing_with_messages_is_rejected() -> None:
    """Postgres issue 14 item 2: an append racing delete_messages left a row count missed."""
    calls = [
        call(0, "append", ("a",), 0, 10),
        call(1, "delete_all", (), 2, 12, ("i0",)),
        call(-1, "get", (0, None), 20, 21, ("a",)),
        call(-1, "count", (), 22, 23, 0),
    ]
    problems = check_history(["i0"], calls)
    assert problems[0] == (
        "count_messages() == 0 but get_messages() holds 1 messages with no call running"
    )
    assert problems[-1].startswith("no sequential order")


def test_lost_append_is_rejected() -> None:
    calls = [
        call(0, "append", ("a",), 0, 10),
        call(1, "append", ("b",), 1, 11),
        *quiescent(["b"]),
    ]
    problems = check_history([], calls)
    assert problems[0] == "acknowledged message 'a' is lost: neither held nor returned"


def test_a_replace_may_discard_messages() -> None:
    calls = [
        call(0, "append", ("a",), 0, 10),
        call(1, "set", (("s",),), 5, 15),
        *quiescent(["s"]),
    ]
    assert check_history(["i0"], calls) == []
    calls[1] = call(1, "set", (("s",),), 11, 15)  # a replace after: still fine
    assert check_history(["i0"], calls) == []


def test_a_message_never_written_is_rejected() -> None:
    problems = check_history([], quiescent(["ghost"]))
    assert "message 'ghost' was never written" in problems


def test_a_call_that_raised_fails_but_may_have_taken_effect() -> None:
    calls = [
        call(0, "append", ("a",), 0, 10, error="ChatStoreError: deadlock detected"),
        *quiescent(["a"]),
    ]
    assert linearize([], calls) is not None
    assert check_history([], calls) == [
        "client 0: add_message(k, 'a') raised ChatStoreError: deadlock detected"
    ]
    calls[-2:] = quiescent([])
    assert linearize([], calls) is not None


def test_shrink_keeps_a_counterexample_and_cuts_the_rest() -> None:
    """The shrunk history still fails, and calls after the contradiction are gone."""
    calls = [
        call(0, "append", ("a",), 0, 10),
        call(1, "get", (0, None), 1, 2, ()),
        call(1, "count", (), 3, 4, 0),
        call(1, "get", (0, None), 11, 12, ()),  # the append ended: the read must see it
        call(0, "append", ("b",), 13, 20),
        call(1, "pop", (), 21, 22, "b"),
        call(0, "get", (0, None), 23, 24, ("a",)),
        *quiescent(["a"]),
    ]
    assert linearize([], calls) is None
    shrunk = shrink([], calls)
    assert linearize([], shrunk) is None
    assert shrunk == [calls[0], calls[3]]
    table = format_history([], shrunk)
    assert "client 1: get_messages(k) -> []" in table


def test_shrink_marks_calls_running_at_the_cut() -> None:
    calls = [
        call(0, "append", ("a",), 0, 50),
        call(1, "pop", (), 1, 2, "x"),  # never written: fails as soon as it ends
        *quiescent(["a"]),
    ]
    shrunk = shrink([], calls)
    assert [c.name for c in shrunk] == ["append", "pop"]
    assert shrunk[0].end is None
    assert "still running at the cut" in format_history([], shrunk)


def test_random_sequential_histories_are_accepted() -> None:
    """Any history made by one client calling the model in turn is accepted."""
    rng = random.Random(7)
    for client_count in (1, 3):
        for _ in range(40):
            state: tuple[str, ...] = tuple(f"i{j}" for j in range(rng.randint(0, 4)))
            initial, clock, calls = state, 0, []
            plans = [plan_calls(rng, c, 6) for c in range(client_count)]
            for step in range(6 * client_count):
                client = step % client_count
                name, args = plans[client][step // client_count]
                state, result = apply(state, name, args)
                calls.append(call(client, name, args, clock, clock + 1, result))
                clock += 2
            calls += quiescent(list(state), clock)
            assert check_history(initial, calls) == [], format_history(initial, calls)


def test_random_concurrent_histories_of_a_lock_are_accepted() -> None:
    """Calls applied atomically at a random instant inside overlapping windows are accepted."""
    rng = random.Random(11)
    for _ in range(60):
        initial = tuple(f"i{j}" for j in range(rng.randint(0, 4)))
        plans = [plan_calls(rng, c, 6) for c in range(3)]
        # Each call: window [start, end] and a commit instant inside it; commits in order.
        windows = []
        for client, plan in enumerate(plans):
            clock = rng.randint(0, 5)
            for name, args in plan:
                start, end = clock, clock + rng.randint(2, 30)
                windows.append((rng.uniform(start, end), client, name, args, start, end))
                clock = end + rng.randint(1, 5)
        state, calls = initial, []
        for _, client, name, args, start, end in sorted(windows):
            state, result = apply(state, name, args)
            calls.append(call(client, name, args, start, end, result))
        calls += quiescent(list(state), 10_000)
        assert check_history(initial, calls) == [], format_history(initial, calls)


INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

HEADER = """
import time

import pytest

from llama_index.storage.chat_store.core import SimpleChatStore
from llama_index.storage.chat_store.core.backend import coerce_message
from llama_index.storage.chat_store.testing import ChatStoreConformance


class Base(ChatStoreConformance):
    @pytest.fixture
    def store_factory(self):
        return Mutant
"""

BROKEN = {
    "pop_returns_a_stale_last": """
        class Mutant(SimpleChatStore):
            def delete_last_message(self, key):
                with self._lock:
                    messages = self.store.get(key)
                    last = messages[-1] if messages else None
                if last is None:
                    return None
                time.sleep(0.003)  # others append meanwhile; then the wrong one goes
                with self._lock:
                    messages = self.store.get(key, [])
                    if messages:
                        messages.pop()
                    if not messages:
                        self.store.pop(key, None)
                return last
        """,
    "append_loses_a_concurrent_write": """
        class Mutant(SimpleChatStore):
            def add_message(self, key, message, idx=None):
                key = self._check_key(key)
                message = coerce_message(message)
                with self._lock:
                    current = list(self.store.get(key, []))
                time.sleep(0.003)
                current.append(message) if idx is None else current.insert(idx, message)
                with self._lock:
                    self.store[key] = current
        """,
    "count_is_off_by_one_on_long_conversations": """
        class Mutant(SimpleChatStore):
            def count_messages(self, key):
                count = super().count_messages(key)
                return count + 1 if count >= 3 else count
        """,
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_stores_fail_the_history_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Each deliberately broken store fails the suite's history test, with a shrunk history."""
    monkeypatch.setenv("CHAT_STORE_HISTORY_SEED", "20250101")
    pytester.makeini(INI)
    pytester.makepyfile(**{
        f"test_history_{name}": HEADER + textwrap.dedent(BROKEN[name])
        + "\n\nclass TestMutant(Base):\n    pass\n"
    })  # fmt: skip
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-q", "-k", "test_concurrent_history_is_linearizable"
    )
    output = result.stdout.str()
    assert result.ret == 1, output[-3000:]
    assert "seed 20250101" in output
    assert "smallest failing part of the history" in output, output[-3000:]


def test_a_correct_store_passes_the_history_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_STORE_HISTORY_SCALE", "3")
    pytester.makeini(INI)
    pytester.makepyfile(
        test_history_healthy=HEADER + "\n\nclass Mutant(SimpleChatStore):\n    pass\n\n"
        "class TestHealthy(Base):\n    pass\n"
    )
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-q", "-s", "-k", "test_concurrent_history_is_linearizable"
    )
    output = result.stdout.str()
    assert result.ret == 0, output[-3000:]
    assert "history: 90 rounds, 1800 calls checked" in output
