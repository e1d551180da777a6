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
    ("count", "count_messages"),
    ("delete_last", "delete_last_message"),
)
VOLUME_OPERATIONS = (("persist", "persist"), ("load", "load (from_persist_path)"))
# A user's chat turn through LlamaIndex's ChatMemoryBuffer, at its own conversation lengths.
TURN = ("turn", "chat turn (ChatMemoryBuffer)")
TURN_LENGTHS = (10, 1_000, 10_000)
# Far above any conversation measured (10,000 messages of ~30 words), so get() returns every
# message and the turn costs what the store costs, not what truncation saves.
TURN_TOKEN_LIMIT = 1_000_000_000
BATCH = 20
MESSAGES_PER_CONVERSATION = 100  # volume stores hold conversations of this length

_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "the", "model",
    "thinks", "about", "tools,", "tokens,", "memory", "buffers,", "retrieval,", "agents", "and",
    "the", "price", "of", "coffee", "in", "Zürich", "東京", "✓",
)  # fmt: skip


def sample_messages(count: int = 200) -> list[str]:
    """Return ``count`` varied messages as LlamaIndex wire JSON (deterministic)."""
    out = []
    for i in range(count):
        words = [_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(8 + (i * 13) % 40)]
        kwargs: dict[str, Any] = {}
        if i % 5 == 4:
            kwargs = {
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": 1}'},
                    }
                ]
            }
        message = {
            "role": "user" if i % 2 == 0 else "assistant",
            "additional_kwargs": kwargs,
            "blocks": [{"block_type": "text", "text": " ".join(words)}],
        }
        out.append(json.dumps(message, ensure_ascii=False, separators=(",", ":")))
    return out


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
    messages to the turn (``message``).
    """

    supports_volume = False
    supports_turn = False

    def chat_store(self) -> Any:  # what ChatMemoryBuffer is given as chat_store
        raise NotImplementedError

    def message(self, i: int) -> Any:  # sample message i (even: user, odd: assistant)
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

    def _m(self, i: int) -> Any:
        return self.messages[i % len(self.messages)]

    def chat_store(self) -> Any:
        return self.store

    def message(self, i: int) -> Any:
        return self._m(i)

    def fill(self, key: str, n: int) -> None:
        self.store.set_messages(key, [self._m(i) for i in range(n)])

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


class Sampler:
    """Take timed samples of one adapter; each operation leaves the conversation's length as is."""

    def __init__(self, adapter: Adapter, workdir: str) -> None:
        self.adapter = adapter
        self.workdir = workdir
        self._next = 0
        self._volume = -1
        self._persisted = -1
        self._memories: dict[str, Any] = {}

    def fill(self, key: str, n: int) -> None:
        self.adapter.fill(key, n)

    def _message(self) -> int:
        self._next += 1
        return self._next

    def sample(self, op: str, key: str, length: int) -> float:
        """Return the seconds one ``op`` took on ``key`` (holding ``length`` messages)."""
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
            user = 2 * self._message()
            question, answer = a.message(user), a.message(user + 1)
            t0 = clock()
            chat_turn(memory, question, answer)
            took = clock() - t0
            a.drop_last(key, 2)
        elif op in ("persist", "load"):
            took = self._volume_sample(op, length)
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
