"""The conformance suite fails broken stores, and its guard catches weakened subclasses."""

from __future__ import annotations

import textwrap

import pytest

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage

HEADER = """
import threading
import time

import pytest

from llama_index.storage.chat_store.core import SimpleChatStore
from llama_index.storage.chat_store.core.backend import coerce_message, coerce_messages
from llama_index.storage.chat_store.testing import ChatStoreConformance

_PAIR = threading.Barrier(2)


def _meet():
    # Both racing threads have read before either writes: deterministic lost update.
    if threading.current_thread() is threading.main_thread():
        return
    try:
        _PAIR.wait(timeout=0.3)
    except threading.BrokenBarrierError:
        _PAIR.reset()


class Base(ChatStoreConformance):
    @pytest.fixture
    def store_factory(self):
        return Mutant

    @pytest.fixture
    def other_store(self):
        return Mutant()

    @pytest.fixture
    def make_corrupt(self, tmp_path):
        def corrupt(key):
            path = tmp_path / "chat_store.json"
            path.write_text('{"store": {"%s": [{"role": "user", "blocks": 1}]}}' % key)
            return Mutant.from_persist_path(path)
        return corrupt
"""

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

MUTANTS = {
    "reverses_order": (
        """
        class Mutant(SimpleChatStore):
            def get_messages(self, key, *, offset=0, limit=None):
                return list(reversed(super().get_messages(key, offset=offset, limit=limit)))
        """,
        "test_messages_come_back_in_insertion_order",
    ),
    "drops_additional_kwargs": (
        """
        class Mutant(SimpleChatStore):
            def add_message(self, key, message, idx=None):
                message = coerce_message(message)
                message.additional_kwargs = {}
                super().add_message(key, message, idx)

            def add_messages(self, key, messages):
                for m in coerce_messages(messages):
                    self.add_message(key, m)
        """,
        "test_tricky_payloads_round_trip",
    ),
    "loses_concurrent_appends": (
        """
        class Mutant(SimpleChatStore):
            def add_message(self, key, message, idx=None):
                key = self._check_key(key)
                message = coerce_message(message)
                with self._lock:
                    current = list(self.store.get(key, []))
                _meet()
                time.sleep(0.002)
                current.append(message) if idx is None else current.insert(idx, message)
                with self._lock:
                    self.store[key] = current
        """,
        "test_concurrent_threads_lose_nothing",
    ),
    "pops_race": (
        """
        class Mutant(SimpleChatStore):
            def delete_last_message(self, key):
                with self._lock:
                    messages = self.store.get(key)
                    last = messages[-1] if messages else None
                if last is None:
                    return None
                _meet()
                with self._lock:
                    messages = self.store.get(key, [])
                    if messages and messages[-1] is last:
                        messages.pop()
                    if not messages:
                        self.store.pop(key, None)
                return last
        """,
        "test_concurrent_pops_never_share",
    ),
    "leaks_keys_between_stores": (
        """
        _SHARED = {}

        class Mutant(SimpleChatStore):
            def model_post_init(self, context):
                super().model_post_init(context)
                self.store = _SHARED
        """,
        "test_stores_are_isolated",
    ),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_each_mutant_fails_the_suite(pytester: pytest.Pytester, name: str) -> None:
    """Each deliberately broken store fails the suite, at the test aimed at its defect."""
    body, expected_failure = MUTANTS[name]
    pytester.makeini(INI)
    pytester.makepyfile(**{
        f"test_mutant_{name}": HEADER + textwrap.dedent(body)
        + "\n\nclass TestMutant(Base):\n    pass\n"
    })  # fmt: skip
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    failed = [line for line in result.outlines if line.startswith("FAILED")]
    assert any(f"::{expected_failure}" in line for line in failed), result.stdout.str()[-3000:]


def test_healthy_store_passes(pytester: pytest.Pytester) -> None:
    """The same harness with an unbroken store passes, so the mutant failures mean something."""
    pytester.makeini(INI)
    pytester.makepyfile(
        test_healthy=HEADER + "\n\nclass Mutant(SimpleChatStore):\n    pass\n\n"
        "class TestHealthy(Base):\n    pass\n"
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    assert result.ret == 0, result.stdout.str()[-3000:]


GUARDED = {
    "silently_weakened": (
        """
        def test_messages_come_back_in_insertion_order(self, store):
            pass
        """,
        False,
    ),
    "deleted": ("test_get_keys_lists_live_conversations = None\n", False),
    "declared_xfail": (
        """
        @pytest.mark.xfail(strict=True, reason="this backend cannot insert (documented)")
        def test_add_message_at_index_on_missing_key(self, store):
            assert False
        """,
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_guard_catches_weakened_subclasses(pytester: pytest.Pytester, name: str) -> None:
    """The guard test fails on a deleted or silently overridden test, accepts a strict xfail."""
    body, guard_passes = GUARDED[name]
    pytester.makeini(INI)
    pytester.makepyfile(**{
        f"test_guarded_{name}": HEADER + "\n\nclass Mutant(SimpleChatStore):\n    pass\n\n"
        "class TestGuarded(Base):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    })  # fmt: skip
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q", "-k", "test_suite_guard")
    assert (result.ret == 0) is guard_passes, result.stdout.str()[-3000:]


def test_overriding_an_async_alias_is_rejected() -> None:
    """A store class that defines an async_X alias is rejected when the class is created."""
    with pytest.raises(TypeError, match="async_get_messages"):

        class Sneaky(BaseChatStore):  # pragma: no cover - never instantiated
            async def async_get_messages(self, key, *, offset=0, limit=None):  # type: ignore[no-untyped-def]
                return [ChatMessage(content="fake")]
