"""The backend kit: plans driven sync and async, retries with one op id, the facade.

The backend here is the smallest one the kit allows: conversations in a process-wide dict
(the "server"), steps applied under a lock, every change a conditional write that records
its op id, and a switch that loses the reply of chosen steps after applying them (or fails
them before), so the kit's retries and op ids run against a real conflict protocol.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    BaseChatStore,
    ChatMessage,
    NotSentError,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import (
    Change,
    ConflictError,
    Plan,
    PlannedChatStore,
    Sleep,
    adrive,
    check_index,
    drive,
    messages_removed,
    split_password,
)
from llama_index.storage.chat_store.core.messages import messages_from_json
from llama_index.storage.chat_store.core.tools import is_tool_result_json, safe_trim_count
from llama_index.storage.chat_store.testing import ChatStoreConformance


@dataclass(frozen=True)
class Read:
    key: str


@dataclass(frozen=True)
class Write:
    key: str
    version: int
    items: list[str]
    change: Change
    reply: Any


@dataclass(frozen=True)
class Keys:
    pass


@dataclass(frozen=True)
class Clear:
    pass


class _Server:
    """Conversations as (version, JSON lines), and the reply of every change by op id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, tuple[int, list[str]]] = {}
        self.replies: dict[str, Any] = {}
        self.steps = 0
        self.lose_reply: set[int] = set()  # step numbers applied whose reply is lost
        self.refuse: set[int] = set()  # step numbers never sent

    def apply(self, step: Any) -> Any:
        with self.lock:
            self.steps += 1
            if self.steps in self.refuse:
                raise NotSentError("refused")
            result = self._apply(step)
            if self.steps in self.lose_reply:
                raise BackendUnavailableError("reply lost")
            return result

    def _apply(self, step: Any) -> Any:
        if isinstance(step, Read):
            version, items = self.data.get(step.key, (0, []))
            return version, list(items), dict(self.replies)
        if isinstance(step, Write):
            if self.data.get(step.key, (0, []))[0] != step.version:
                raise ConflictError(step.key)
            # An emptied conversation keeps its version: a writer that read it before
            # never overwrites a refilled one (no ABA).
            self.data[step.key] = (step.version + 1, list(step.items))
            self.replies[step.change.id] = step.reply
            return None
        if isinstance(step, Keys):
            return sorted(key for key, (_, items) in self.data.items() if items)
        self.data.clear()
        return None


class DictChatStore(PlannedChatStore):
    """A store on the kit over a :class:`_Server` named ``name``."""

    servers: ClassVar[dict[str, _Server]] = {}
    name: str = "default"

    # Capabilities: none. Its "server" lives in this process (not SHARED across processes,
    # nor PERSISTENT), and has no network for the suite's fault proxy to cut (the retries
    # and op ids are tested below with failures injected into the steps instead).

    @property
    def server(self) -> _Server:
        return self.servers.setdefault(self.name, _Server())

    def _execute(self, step: Any) -> Any:
        return self.server.apply(step)

    def _get_plan(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        _, items, _ = yield Read(key)
        start = range(len(items))[offset:].start if items else 0
        part = items[start:] if limit is None else items[start:][:limit]
        return messages_from_json(part, key=key, start=start)

    def _count_plan(self, key: str) -> Plan[int]:
        _, items, _ = yield Read(key)
        return len(items)

    def _edit(self, key: str, change: Change, edit: Callable[[list[str]], Any]) -> Plan[Any]:
        """Apply ``edit`` (changes the list in place, returns the reply) conditionally, once."""
        while True:
            version, items, replies = yield Read(key)
            if change.check and change.id in replies:
                return replies[change.id]
            reply = edit(items)
            try:
                yield Write(key, version, items, change, reply)
            except ConflictError:
                yield Sleep(0)
                continue
            return reply

    def _add_plan(
        self, key: str, messages: list[ChatMessage], idx: int | None, change: Change
    ) -> Plan[None]:
        lines = [message_to_json(m) for m in messages]

        def edit(items: list[str]) -> None:
            if idx is None:
                items.extend(lines)
            else:
                items.insert(idx, lines[0])

        yield from self._edit(key, change, edit)

    def _set_plan(self, key: str, messages: list[ChatMessage], change: Change) -> Plan[None]:
        lines = [message_to_json(m) for m in messages]

        def edit(items: list[str]) -> None:
            items[:] = lines

        yield from self._edit(key, change, edit)

    def _take(
        self, key: str, change: Change, pick: Callable[[list[str]], range]
    ) -> Plan[list[ChatMessage]]:
        def edit(items: list[str]) -> list[tuple[int, str]]:
            chosen = pick(items)
            taken = [(i, items[i]) for i in chosen]
            del items[chosen.start : chosen.stop]
            return taken

        taken = yield from self._edit(key, change, edit)
        return messages_removed(key, taken, storage="the dict")

    def _delete_all_plan(self, key: str, change: Change) -> Plan[list[ChatMessage] | None]:
        return (yield from self._take(key, change, lambda items: range(len(items))))

    def _delete_at_plan(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        def pick(items: list[str]) -> range:
            size = len(items)
            if not -size <= idx < size:
                return range(0)
            return range(idx % size, idx % size + 1)

        taken = yield from self._take(key, change, pick)
        return taken[0] if taken else None

    def _oldest_plan(
        self, key: str, n: int, change: Change, tool_safe: bool
    ) -> Plan[list[ChatMessage]]:
        def pick(items: list[str]) -> range:
            if tool_safe:
                return range(safe_trim_count(items, n, is_tool_result_json))
            return range(min(n, len(items)))

        return (yield from self._take(key, change, pick))

    def _keys_plan(self, cursor: Any) -> Plan[tuple[Sequence[str], Any]]:
        keys = yield Keys()
        start = cursor or 0
        page = keys[start : start + 2]  # tiny pages: paging is exercised
        return page, (start + 2 if start + 2 < len(keys) else None)

    def _clear_plan(self) -> Plan[None]:
        yield Clear()


_names = iter(range(1_000_000))


class TestPlannedChatStoreConformance(ChatStoreConformance):
    @pytest.fixture
    def store_factory_for(self) -> Callable[..., Callable[[], BaseChatStore]]:
        def factory_for(name: str, **options: Any) -> Callable[[], BaseChatStore]:
            return lambda: DictChatStore(name=name, **options)

        return factory_for

    @pytest.fixture
    def make_corrupt(self) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            store = DictChatStore(name=f"corrupt-{next(_names)}")
            store.add_messages(key, [ChatMessage(content="fine")] * 2)
            items = store.server.data[key][1]
            items[1] = '{"role": 7'
            return store

        return corrupt


@pytest.fixture
def store() -> DictChatStore:
    return DictChatStore(name=f"unit-{next(_names)}", retry_backoff=0)


def test_a_lost_reply_is_retried_and_applied_once(store: DictChatStore) -> None:
    """The write of an append applies, its reply is lost: the retry finds its op id."""
    store.add_message("k", ChatMessage(content="a"))
    server = store.server
    server.lose_reply = {server.steps + 2}  # the Write after the Read
    store.add_message("k", ChatMessage(content="b"))
    assert [m.content for m in store.get_messages("k")] == ["a", "b"]
    server.lose_reply = {server.steps + 2}
    assert store.delete_last_message("k").content == "b"  # type: ignore[union-attr]
    assert [m.content for m in store.get_messages("k")] == ["a"]


def test_async_lost_reply_is_retried_and_applied_once(store: DictChatStore) -> None:
    server = store.server
    server.lose_reply = {server.steps + 2}
    asyncio.run(store.aadd_messages("k", [ChatMessage(content="a"), ChatMessage(content="b")]))
    assert asyncio.run(store.acount_messages("k")) == 2


def test_an_attempt_never_sent_does_not_make_the_next_look(store: DictChatStore) -> None:
    seen: list[bool] = []
    make = store._add_plan

    def spy(key: str, messages: Any, idx: Any, change: Change) -> Plan[None]:
        seen.append(change.check)
        return make(key, messages, idx, change)

    object.__setattr__(store, "_add_plan", spy)
    server = store.server
    server.refuse = {server.steps + 1}
    store.add_message("k", ChatMessage(content="a"))
    server.lose_reply = {server.steps + 2}
    store.add_message("k", ChatMessage(content="b"))
    assert seen == [False, False, False, True]


def test_change_state_is_kept_across_attempts(store: DictChatStore) -> None:
    """What a plan keeps in ``change.state`` is there for the next attempt of that change only."""
    states: list[Any] = []
    make = store._add_plan

    def spy(key: str, messages: Any, idx: Any, change: Change) -> Plan[None]:
        states.append(change.state)
        change.state = (change.state or 0) + 1
        return make(key, messages, idx, change)

    object.__setattr__(store, "_add_plan", spy)
    server = store.server
    server.lose_reply = {server.steps + 2}
    store.add_message("k", ChatMessage(content="a"))
    store.add_message("k", ChatMessage(content="b"))
    assert states == [None, 1, None]


def test_giving_up_says_what_became_of_the_change() -> None:
    store = DictChatStore(name=f"unit-{next(_names)}", retries=1, retry_backoff=0)
    server = store.server
    server.refuse = {1, 2}
    with pytest.raises(NotSentError, match="nothing was applied"):
        store.add_message("k", ChatMessage(content="a"))
    server.lose_reply = {4, 5}  # the first Write applies unanswered; the next Read fails
    with pytest.raises(BackendUnavailableError, match="outcome is unknown"):
        store.add_message("k", ChatMessage(content="a"))
    assert store.count_messages("k") == 1


class ResendingDictChatStore(DictChatStore):
    """The same backend, with the kit resending each step instead of each plan."""

    _resend_steps: ClassVar[bool] = True


def test_resend_steps_resends_the_step_and_marks_its_conflict() -> None:
    """A Write whose reply is lost is sent again alone; its conflict with itself sets check."""
    store = ResendingDictChatStore(name=f"unit-{next(_names)}", retry_backoff=0)
    store.add_message("k", ChatMessage(content="a"))
    server = store.server
    start = server.steps
    server.lose_reply = {start + 2}  # the Write after the Read
    store.add_message("k", ChatMessage(content="b"))
    # Read, Write (applied, reply lost), the Write again (conflicts), Read (finds its op id).
    assert server.steps - start == 4
    assert [m.content for m in store.get_messages("k")] == ["a", "b"]
    server.lose_reply = {server.steps + 1}
    assert store.count_messages("k") == 2  # a read step resent alone, too


class UnresentDictChatStore(ResendingDictChatStore):
    """Resending each step, but for writes: the kind of step a resend could apply twice."""

    def _resendable(self, step: Any) -> bool:
        return not isinstance(step, Write)


def test_a_step_not_resendable_is_looked_for_instead() -> None:
    """A write that may have reached the server is never sent again: the plan looks instead.

    Sent once, its reply lost: the plan gets a conflict with ``check`` set and finds its op
    id. One refused (provably never sent) is sent again. If this fails: the kit resends a
    step the backend said it must not, or the plan is not told to look.
    """
    store = UnresentDictChatStore(name=f"unit-{next(_names)}", retry_backoff=0)
    server = store.server
    server.lose_reply = {2}  # the Write after the Read
    store.add_message("k", ChatMessage(content="a"))
    assert server.steps == 3  # Read, Write (applied, reply lost), Read (finds its op id)
    server.refuse = {5}
    asyncio.run(store.aadd_message("k", ChatMessage(content="b")))
    assert server.steps == 6  # Read, Write (refused), Write
    assert [m.content for m in store.get_messages("k")] == ["a", "b"]


def test_resend_steps_says_what_became_of_the_change() -> None:
    store = ResendingDictChatStore(name=f"unit-{next(_names)}", retries=0)
    server = store.server
    server.refuse = {1}
    with pytest.raises(NotSentError, match="nothing was applied"):
        store.add_message("k", ChatMessage(content="a"))
    server.refuse = {3}  # the Write, after its Read reached the server
    with pytest.raises(BackendUnavailableError, match="outcome is unknown") as raised:
        asyncio.run(store.aadd_message("k", ChatMessage(content="a")))
    assert not isinstance(raised.value, NotSentError)
    assert store.count_messages("k") == 0


def test_drive_throws_conflicts_in_and_closes_plans_on_errors() -> None:
    closed: list[str] = []

    def plan() -> Plan[str]:
        try:
            try:
                yield "conflict"
            except ConflictError:
                yield Sleep(0)
                answer = yield "fine"
                yield "boom"
                return str(answer)
        finally:
            closed.append("closed")
        return "unreachable"

    def execute(step: str) -> str:
        if step == "conflict":
            raise ConflictError(step)
        if step == "boom":
            raise KeyError(step)
        return step.upper()

    async def aexecute(step: str) -> str:
        return execute(step)

    with pytest.raises(KeyError):
        drive(plan(), execute)
    with pytest.raises(KeyError):
        asyncio.run(adrive(plan(), aexecute))
    assert closed == ["closed", "closed"]


def test_argument_checks() -> None:
    assert check_index("n", 3) == 3
    with pytest.raises(TypeError, match="idx must be an int"):
        check_index("idx", True)
    with pytest.raises(TypeError, match="n must be an int"):
        DictChatStore(name="x").delete_oldest_messages("k", "2")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "plain", "password"),
    [
        ("redis://u:p%40ss@h:1/0", "redis://u@h:1/0", "p@ss"),
        ("redis://:pw@h/0", "redis://h/0", "pw"),
        ("postgresql://u@h/db?password=q&sslmode=off", "postgresql://u@h/db?sslmode=off", "q"),
        ("postgresql://u:a@h/db?password=b", "postgresql://u@h/db", "b"),
        ("redis://h:1/0", "redis://h:1/0", None),
        ("unix:///run/redis.sock?db=1&password=x", "unix:///run/redis.sock?db=1", "x"),
    ],
)
def test_split_password(url: str, plain: str, password: str | None) -> None:
    assert split_password(url) == (plain, password)


def test_split_password_where_the_user_info_wins() -> None:
    assert split_password("redis://u:a@h/0?password=b", query_wins=False) == ("redis://u@h/0", "a")
    assert split_password("redis://h/0?password=b", query_wins=False) == ("redis://h/0", "b")


@pytest.mark.parametrize("option", ["retries", "retry_backoff", "retry_deadline"])
def test_a_bool_for_a_number_option_is_an_error(option: str) -> None:
    """``retries=True`` is refused (pydantic's lax mode would take it for 1), naming the option."""
    with pytest.raises(ValueError, match=option):
        DictChatStore(name=f"unit-{next(_names)}", **{option: True})
    assert getattr(DictChatStore(**{option: "2"}), option) == 2  # URL text still converts
