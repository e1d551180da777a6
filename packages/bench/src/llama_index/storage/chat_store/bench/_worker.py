"""An implementation measured in its own process: LlamaIndex's store, or a baseline of ours.

``python _worker.py REFERENCE_SOURCE_FILE WORKDIR`` (run as a script by the reference
interpreter) builds LlamaIndex's store with the ``make_store(url)`` function the backend's
reference source defines. ``python -m llama_index.storage.chat_store.bench._worker --ours
NAME DECLARATION_FILE WORKDIR`` (run by the harness's interpreter with a previous
revision's source folders first on ``PYTHONPATH``) builds our store with the declaration's
``ours(url)``, and reports the files its modules came from. Either way the worker then answers
one JSON command per line on stdin with one JSON reply per line. Timing happens here, with the
same ``Sampler`` the harness uses in-process, so the pipe is never measured. As a script it
needs the standard library plus ``llama_index.core`` (only in the reference environment): this
file runs beside ``_ops.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from llama_index.storage.chat_store.bench._ops import (
        Adapter,
        Sampler,
        StoreAdapter,
        sample_messages,
    )
else:  # run as a script: _ops.py sits beside this file (and sys.path[0] is this folder)
    from _ops import Adapter, Sampler, StoreAdapter, sample_messages


class LlamaIndexAdapter(StoreAdapter):
    """The verbs over a LlamaIndex ``BaseChatStore``, used the way LlamaIndex code uses it.

    LlamaIndex's store has no batch append, no window and no count: ``add_many`` appends one
    by one, ``get_last`` slices ``get_messages``, ``count`` is ``len(get_messages(key))``.
    The chat turn hands the store to LlamaIndex's ``ChatMemoryBuffer``, as ours is. It has no
    tool-safe window, and no catalog: its nearest operation, ``get_keys()``, returns every key
    of the store at once (``list_page``). ``hooks`` are the reference source's optional
    ``fill_catalog(store, keys, message)`` and ``drop_catalog(store, keys)``.
    """

    def __init__(
        self, make_store: Callable[[str], Any], url: str, hooks: dict[str, Any] | None = None
    ) -> None:
        chat_message = importlib.import_module("llama_index.core.llms").ChatMessage
        super().__init__(
            make_store, url, [chat_message.model_validate_json(m) for m in sample_messages()]
        )
        self.supports_volume = hasattr(self.store, "persist")
        self.supports_catalog = hasattr(self.store, "get_keys")
        self.hooks = hooks or {}
        self.catalog_keys: list[str] = []

    def add_many(self, key: str, start: int, n: int) -> None:
        for j in range(n):
            self.store.add_message(key, self._m(start + j))

    def get_last(self, key: str, n: int) -> object:
        return self.store.get_messages(key)[-n:]

    def count(self, key: str) -> int:
        return len(self.store.get_messages(key))

    def drop_last(self, key: str, n: int) -> None:
        # Each of its removals reads and rewrites the whole conversation where it keeps one
        # value (DynamoDB, PostgreSQL): one read and one write instead of n of each.
        self.store.set_messages(key, self.store.get_messages(key)[:-n])

    def grow_catalog(self, keys: list[str]) -> None:
        store, message = self.catalog_store(), self._m(0)
        self.catalog_keys += keys
        if "fill_catalog" in self.hooks:
            self.hooks["fill_catalog"](store, keys, message)
            return
        for key in keys:
            store.add_message(key, message)

    def list_page(self) -> object:
        return self.catalog.get_keys()

    def drop_catalog(self) -> None:
        keys, self.catalog_keys = self.catalog_keys, []
        if "drop_catalog" in self.hooks:
            self.hooks["drop_catalog"](self.catalog, keys)
        else:
            for key in keys:
                self.catalog.delete_messages(key)
        self.catalog = None

    def close(self) -> None:
        if self.catalog_keys:
            self.drop_catalog()

    def persist(self, path: str) -> None:
        self.volume.persist(persist_path=path)

    def load(self, path: str) -> None:
        type(self.volume).from_persist_path(persist_path=path)


Build = Callable[[str], "tuple[Adapter, dict[str, Any]]"]


def _llama_index(source_file: str) -> Build:
    namespace: dict[str, Any] = {"__name__": "llama_index_reference"}
    with open(source_file, encoding="utf-8") as f:
        exec(compile(f.read(), source_file, "exec"), namespace)  # noqa: S102 (the backend's own reference code)

    def build(url: str) -> tuple[Adapter, dict[str, Any]]:
        hooks: dict[str, Any] = {
            h: namespace[h] for h in ("fill_catalog", "drop_catalog") if h in namespace
        }
        adapter = LlamaIndexAdapter(namespace["make_store"], url, hooks)
        return adapter, _hello(adapter)

    return build


def _ours(name: str, declaration: str) -> Build:
    # Imported here: the reference interpreter has neither the harness nor our stores.
    from pathlib import Path

    from llama_index.storage.chat_store.bench._adapters import OursAdapter
    from llama_index.storage.chat_store.bench._cli import load
    from llama_index.storage.chat_store.bench._declare import Backend

    bench = load(name, Path(declaration))
    if not isinstance(bench, Backend):
        raise TypeError(f"{declaration} declares a Task, not a Backend: it has no store")

    def build(url: str) -> tuple[Adapter, dict[str, Any]]:
        adapter = OursAdapter(bench.ours, url, bench.fill_catalog)
        store_module = type(adapter.store).__module__
        modules = {
            module: sys.modules[module].__file__ or ""
            for module in ("llama_index.storage.chat_store.core", store_module)
        }
        return adapter, {**_hello(adapter), "modules": modules}

    return build


def _hello(adapter: Adapter) -> dict[str, Any]:
    """What the harness learns of the worker's implementation: the operations it takes."""
    return {
        "volume": adapter.supports_volume,
        "turn": adapter.supports_turn,
        "tool_safe": adapter.supports_tool_safe,
        "catalog": adapter.supports_catalog,
    }


def main() -> None:
    args = sys.argv[1:]
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    # Imports first (seconds): the harness starts the server meanwhile, then sends its URL.
    if args[0] == "--ours":
        name, declaration, workdir = args[1:4]
        build = _ours(name, declaration)
    else:
        source_file, workdir = args[:2]
        build = _llama_index(source_file)
    url = sys.stdin.readline().strip()
    if not url:  # the harness gave up before its server was up
        return
    adapter, hello = build(url)
    sampler = Sampler(adapter, workdir)
    replies.write(json.dumps({"ready": True, **hello}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        try:
            verb = command.pop("verb")
            if verb == "exit":
                break
            on_sampler = verb in ("sample", "fill", "drop_catalog")
            result = getattr(sampler if on_sampler else adapter, verb)(**command)
            replies.write(json.dumps({"result": result}) + "\n")
        except Exception:
            replies.write(json.dumps({"error": traceback.format_exc()}) + "\n")
    adapter.close()


if __name__ == "__main__":
    main()
