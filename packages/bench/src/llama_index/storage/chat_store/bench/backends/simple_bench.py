"""SimpleChatStore (core) beside a plain dict of JSON strings and LlamaIndex's SimpleChatStore."""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from llama_index.storage.chat_store.bench import Backend, Reference
from llama_index.storage.chat_store.core import chat_store_from_url


class DictOfJsonStrings:
    """The floor: a dict of lists of message JSON strings, no lock, no copies, no checks."""

    label = (
        "dict of lists of JSON strings; persist writes the same file bytes, load is json.loads; "
        "a catalog page is the 100 smallest keys of a dict (heapq.nsmallest) with their lengths"
    )

    def __init__(self) -> None:
        self.store: dict[str, list[str]] = {}
        self.catalog: dict[str, list[str]] = {}

    def add(self, key: str, message: str) -> None:
        self.store.setdefault(key, []).append(message)

    def add_many(self, key: str, messages: Sequence[str]) -> None:
        self.store.setdefault(key, []).extend(messages)

    def get_all(self, key: str) -> list[str]:
        return list(self.store.get(key, ()))

    def get_last(self, key: str, n: int) -> list[str]:
        return self.store.get(key, [])[-n:]

    def count(self, key: str) -> int:
        return len(self.store.get(key, ()))

    def delete_last(self, key: str) -> str | None:
        messages = self.store.get(key)
        return messages.pop() if messages else None

    def delete(self, key: str) -> None:
        self.store.pop(key, None)

    def close(self) -> None:
        pass

    def catalog_fill(self, keys: Sequence[str], message: str) -> None:
        self.catalog.update((key, [message]) for key in keys)

    def catalog_page(self, limit: int) -> list[tuple[str, int]]:
        return [(key, len(self.catalog[key])) for key in heapq.nsmallest(limit, self.catalog)]

    def catalog_drop(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.catalog.pop(key, None)

    def persist(self, path: str) -> None:
        body = ",".join(
            f"{json.dumps(key, ensure_ascii=False)}:[{','.join(messages)}]"
            for key, messages in self.store.items()
        )
        Path(path).write_text(f'{{"store":{{{body}}},"class_name":"SimpleChatStore"}}', "utf-8")

    def load(self, path: str) -> None:
        json.loads(Path(path).read_bytes())


LLAMA_INDEX_SIMPLE = """
from llama_index.core.storage.chat_store import SimpleChatStore

def make_store(url):
    return SimpleChatStore()
"""

BENCH = Backend(
    title="SimpleChatStore (in memory; persist/load of a JSON file)",
    server=lambda: nullcontext("memory://"),
    ours=chat_store_from_url,
    raw=lambda url: DictOfJsonStrings(),
    reference=Reference(requirements=[], source=LLAMA_INDEX_SIMPLE),
    notes=[
        "ours copies every message on the way in and out (a caller changing a message never "
        "changes the store), checks keys and takes a lock; LlamaIndex's SimpleChatStore keeps "
        "and hands out the caller's objects and its internal list, without a lock.",
        "ours persists atomically (temp file, fsync, rename); LlamaIndex writes the file in place.",
    ],
)
