"""The operations measured, and how one sample of each is taken.

Standard library only: this module's source also runs inside the LlamaIndex reference
interpreter (see ``_worker.py``), so the three implementations are timed by the same code.
An *adapter* gives one implementation the verbs below; messages are referred to by index
into the adapter's own list of sample messages (built before any timing).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

# (operation, shown as) in table order. Volume operations take a whole store of N messages.
OPERATIONS = (
    ("add", "add_message"),
    ("add_many", "add_messages(20)"),
    ("get_all", "get_messages (all)"),
    ("get_last", "get_messages (last 20)"),
    ("get_last_safe", "get_messages (last 20, tool_safe)"),
    ("count", "count_messages"),
    ("delete_last", "delete_last_message"),
)
VOLUME_OPERATIONS = (("persist", "persist"), ("load", "load (from_persist_path)"))
# The conversation catalog: the first page of a store holding N conversations (CATALOG_SIZES).
CATALOG = ("list_page", "first page of 100 conversations")
CATALOG_SIZES = (1_000, 10_000, 100_000)
PAGE = 100
# A user's chat turn through LlamaIndex's ChatMemoryBuffer, at its own conversation lengths.
TURN = ("turn", "chat turn (ChatMemoryBuffer)")
TURN_LENGTHS = (10, 1_000, 10_000)
# Far above any conversation measured (10,000 messages of ~30 words), so get() returns every
# message and the turn costs what the store costs, not what truncation saves.
TURN_TOKEN_LIMIT = 1_000_000_000
BATCH = 20
CYCLE = 5
_TURN = ("user", "calls", "tool", "tool", "assistant")
_WINDOW_START = 3  # the second tool result
MESSAGES_PER_CONVERSATION = 100  # volume stores hold conversations of this length

_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "the", "model",
    "thinks", "about", "tools,", "tokens,", "memory", "buffers,", "retrieval,", "agents", "and",
    "the", "price", "of", "coffee", "in", "Zürich", "東京", "✓",
)  # fmt: skip


def sample_messages(count: int = 200) -> list[str]:
    """Return ``count`` varied messages as LlamaIndex wire JSON (deterministic).

    They repeat a chat with tool exchanges, :data:`CYCLE` messages long: a user's message, an
    assistant's calling two tools (OpenAI-style ``tool_calls``), the two tool results
    (``tool_call_id``), the assistant's answer.
    """
    out = []
    for i in range(count):
        words = [_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(8 + (i * 13) % 40)]
        call = i - i % CYCLE + 1  # this turn's calling message
        role = _TURN[i % CYCLE]
        kwargs: dict[str, Any] = {}
        if role == "calls":
            role = "assistant"
            kwargs = {"tool_calls": [_tool_call(f"call_{i}_{n}") for n in "ab"]}
        elif role == "tool":
            kwargs = {"tool_call_id": f"call_{call}_{'ab'[i % CYCLE - 2]}"}
        message = {
            "role": role,
            "additional_kwargs": kwargs,
            "blocks": [{"block_type": "text", "text": " ".join(words)}],
        }
        out.append(json.dumps(message, ensure_ascii=False, separators=(",", ":")))
    return out


def _tool_call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


def conversation(n: int) -> range:
    """Sample indices of a conversation of ``n`` messages, as every implementation fills it.

    Shifted along the chat's cycle so that the last-20 window starts on the second tool result
    of an exchange: a tool-safe read must widen it back over the other result to the call.
    """
    shift = (_WINDOW_START - (n - BATCH)) % CYCLE
    return range(shift, shift + n)


def chat_memory(store: Any, key: str) -> Any:
    """Return LlamaIndex's ``ChatMemoryBuffer`` over ``store`` as its documentation builds it.

    A whitespace tokenizer (``str.split``) and :data:`TURN_TOKEN_LIMIT`: the memory counts the
    tokens of the whole conversation on every ``get()`` and returns all of it.
    """
    memory = importlib.import_module("llama_index.core.memory")
    return memory.ChatMemoryBuffer.from_defaults(
        chat_store=store,
        chat_store_key=key,
        token_limit=TURN_TOKEN_LIMIT,
        tokenizer_fn=str.split,
    )


def chat_turn(memory: Any, user: Any, answer: Any) -> None:
    """Take one chat turn as a chat engine does: put the user's message, get(), put the answer."""
    memory.put(user)
    memory.get()
    memory.put(answer)


class Adapter:
    """One implementation's verbs; subclasses implement them over a store or a raw client.

    ``persist``/``load``/``new_volume`` are optional: an adapter whose ``supports_volume`` is
    False gets no volume rows. An adapter whose ``supports_turn`` is True gets the chat-turn
    rows: it hands its store to LlamaIndex's ``ChatMemoryBuffer`` (``chat_store``) and its
    messages to the turn (``message``). ``supports_tool_safe``: it has ``get_last_safe``;
    ``supports_catalog``: it keeps a catalog of its own conversations (``grow_catalog``,
    ``list_page``, ``drop_catalog``), apart from the conversations of the other operations.
    """

    supports_volume = False
    supports_turn = False
    supports_tool_safe = False
    supports_catalog = False

    def chat_store(self) -> Any:  # what ChatMemoryBuffer is given as chat_store
        raise NotImplementedError

    def message(self, i: int) -> Any:  # sample message i (see sample_messages)
        raise NotImplementedError

    def fill(self, key: str, n: int) -> None:  # untimed set-up: the fastest way to hold n
        raise NotImplementedError

    def add(self, key: str, i: int) -> None:
        raise NotImplementedError

    def add_many(self, key: str, start: int, n: int) -> None:
        raise NotImplementedError

    def get_all(self, key: str) -> object:
        raise NotImplementedError

    def get_last(self, key: str, n: int) -> object:
        raise NotImplementedError

    def get_last_safe(self, key: str, n: int) -> object:
        raise NotImplementedError

    def count(self, key: str) -> int:
        raise NotImplementedError

    def delete_last(self, key: str) -> object:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def drop_last(self, key: str, n: int) -> None:  # untimed clean-up after an append
        for _ in range(n):
            self.delete_last(key)

    def close(self) -> None:
        pass

    def new_volume(self, n: int) -> None:  # a separate store holding n messages
        raise NotImplementedError

    def persist(self, path: str) -> None:
        raise NotImplementedError

    def load(self, path: str) -> None:
        raise NotImplementedError

    def grow_catalog(self, keys: list[str]) -> None:  # untimed: one message under each new key
        raise NotImplementedError

    def list_page(self) -> object:
        raise NotImplementedError

    def drop_catalog(self) -> None:  # remove every conversation grow_catalog added
        raise NotImplementedError


class StoreAdapter(Adapter):
    """The verbs over a chat store that ours and LlamaIndex's share (and the chat turn).

    ``make_store(url)`` builds the store (and each volume); ``messages`` are the samples in
    the store's own message class.
    """

    supports_turn = True

    def __init__(self, make_store: Callable[[str], Any], url: str, messages: list[Any]) -> None:
        self.make_store = make_store
        self.url = url
        self.messages = messages
        self.store = make_store(url)
        self.volume: Any = None
        self.catalog: Any = None  # a store of its own, built by the first grow_catalog

    def _m(self, i: int) -> Any:
        return self.messages[i % len(self.messages)]

    def chat_store(self) -> Any:
        return self.store

    def message(self, i: int) -> Any:
        return self._m(i)

    def fill(self, key: str, n: int) -> None:
        self.store.set_messages(key, [self._m(i) for i in conversation(n)])

    def add(self, key: str, i: int) -> None:
        self.store.add_message(key, self._m(i))

    def get_all(self, key: str) -> object:
        return self.store.get_messages(key)

    def delete_last(self, key: str) -> object:
        return self.store.delete_last_message(key)

    def delete(self, key: str) -> None:
        self.store.delete_messages(key)

    def new_volume(self, n: int) -> None:
        self.volume = self.make_store(self.url)
        for c in range(0, n, MESSAGES_PER_CONVERSATION):
            size = min(MESSAGES_PER_CONVERSATION, n - c)
            self.volume.set_messages(f"v{c}", [self._m(c + i) for i in range(size)])

    def catalog_store(self) -> Any:
        if self.catalog is None:
            self.catalog = self.make_store(self.url)
        return self.catalog


class Sampler:
    """Take timed samples of one adapter; each operation leaves the conversation's length as is."""

    def __init__(self, adapter: Adapter, workdir: str) -> None:
        self.adapter = adapter
        self.workdir = workdir
        self._next = 0
        self._volume = -1
        self._persisted = -1
        self._catalog = 0
        self._memories: dict[str, Any] = {}

    def fill(self, key: str, n: int) -> None:
        self.adapter.fill(key, n)

    def drop_catalog(self) -> None:
        """Remove the catalog's conversations (the next ``list_page`` sample grows a new one)."""
        if self._catalog:
            self.adapter.drop_catalog()
            self._catalog = 0

    def _message(self) -> int:
        self._next += 1
        return self._next

    def sample(self, op: str, key: str, length: int, warm: bool = False) -> float:
        """Return the seconds one ``op`` took on ``key`` (holding ``length`` messages).

        ``warm``: make an untimed call of ``op`` right before, in this process, so the timed
        one does not pay for waking up (this process, its connection, the server) after a
        pause. Made here, not by the harness: a worker process sleeps between two commands,
        so an untimed call the harness sent as a command of its own would warm nothing.
        """
        if warm:
            self._sample(op, key, length)
        return self._sample(op, key, length)

    def _sample(self, op: str, key: str, length: int) -> float:
        a = self.adapter
        clock = time.perf_counter
        if op == "add":
            i = self._message()
            t0 = clock()
            a.add(key, i)
            took = clock() - t0
            a.delete_last(key)
        elif op == "add_many":
            start = self._message()
            t0 = clock()
            a.add_many(key, start, BATCH)
            took = clock() - t0
            a.drop_last(key, BATCH)
        elif op == "get_all":
            t0 = clock()
            a.get_all(key)
            took = clock() - t0
        elif op == "get_last":
            t0 = clock()
            a.get_last(key, BATCH)
            took = clock() - t0
        elif op == "get_last_safe":
            t0 = clock()
            a.get_last_safe(key, BATCH)
            took = clock() - t0
        elif op == "count":
            t0 = clock()
            a.count(key)
            took = clock() - t0
        elif op == "delete_last":
            t0 = clock()
            a.delete_last(key)
            took = clock() - t0
            a.add(key, self._message())
        elif op == "turn":
            # One memory per conversation, built once (untimed), as an app keeps it per session.
            memory = self._memories.get(key)
            if memory is None:
                memory = self._memories[key] = chat_memory(a.chat_store(), key)
            user = CYCLE * self._message()  # a user's message; its turn ends with the answer
            question, answer = a.message(user), a.message(user + CYCLE - 1)
            t0 = clock()
            chat_turn(memory, question, answer)
            took = clock() - t0
            a.drop_last(key, 2)
        elif op in ("persist", "load"):
            took = self._volume_sample(op, length)
        elif op == CATALOG[0]:
            took = self._catalog_sample(length)
        else:
            raise ValueError(f"unknown operation {op!r}")
        return took

    def _volume_sample(self, op: str, n: int) -> float:
        a = self.adapter
        path = os.path.join(self.workdir, f"volume-{n}.json")
        if self._volume != n:
            a.new_volume(n)
            self._volume = n
            self._persisted = -1
        clock = time.perf_counter
        if op == "persist":
            t0 = clock()
            a.persist(path)
            took = clock() - t0
            self._persisted = n
            return took
        if self._persisted != n:
            a.persist(path)
            self._persisted = n
        t0 = clock()
        a.load(path)
        return clock() - t0

    def _catalog_sample(self, n: int) -> float:
        a = self.adapter
        if self._catalog > n:  # sizes come in increasing order; anything else starts again
            self.drop_catalog()
        if self._catalog < n:
            a.grow_catalog([catalog_key(i) for i in range(self._catalog, n)])
            self._catalog = n
        t0 = time.perf_counter()
        a.list_page()
        return time.perf_counter() - t0


def catalog_key(i: int) -> str:
    """The key of the catalog's ``i``-th conversation (keys sort as their numbers do)."""
    return f"conversation-{i:07d}"
