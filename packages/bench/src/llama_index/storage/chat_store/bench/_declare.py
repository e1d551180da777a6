"""What a backend declares to get its benchmark rows (see the package README)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.testing.services import LocalServer

__all__ = ["QUICK_SCALE", "Backend", "RawDriver", "Reference", "Task", "is_quick", "service"]

QUICK_SCALE = 0.1
"""Below this ``BENCH_SCALE`` a run checks the harness: fewer repeats, numbers not for reading."""


def is_quick(scale: float) -> bool:
    """Return whether a run at ``scale`` is a quick check (default repeats cut, see README).

    Tables meant to be read (``--update-results``) are made at ``QUICK_SCALE`` or above, with
    every repeat; a quick run's fixed costs (process and server start-up) dominate, and its
    repeats would not make its tiny volumes say more.
    """
    return scale < QUICK_SCALE


@runtime_checkable
class RawDriver(Protocol):
    """The floor: the same work done with the bare client over message JSON strings.

    No validation, no parsing, no bookkeeping: what the backend's driver costs at the least.
    A driver that also has ``persist(path)`` and ``load(path)`` gets persist/load rows; one
    that also has ``catalog_fill(keys, message)`` (untimed: a conversation of one message under
    each key), ``catalog_page(limit)`` (the first ``limit`` conversations in key order, each
    with what the bare storage can say about it) and ``catalog_drop(keys)`` gets the catalog's.
    """

    label: str
    """Shown in the report, e.g. ``"redis-py RPUSH/LRANGE"``."""

    def add(self, key: str, message: str) -> None: ...
    def add_many(self, key: str, messages: Sequence[str]) -> None: ...
    def get_all(self, key: str) -> list[str]: ...
    def get_last(self, key: str, n: int) -> list[str]: ...
    def count(self, key: str) -> int: ...
    def delete_last(self, key: str) -> str | None: ...
    def delete(self, key: str) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Reference:
    """LlamaIndex's own store for this backend, run in the reference interpreter.

    Attributes:
        requirements: Pip requirements beyond ``llama-index-core`` (pinned, e.g.
            ``["llama-index-storage-chat-store-redis==0.8.0"]``).
        source: Python source defining ``make_store(url: str)`` that returns LlamaIndex's
            store on the server at ``url``. It runs in the reference interpreter, never here.
            Where our store keeps a catalog, LlamaIndex's ``get_keys()`` is measured beside it
            on a store of its own holding N conversations, filled with ``add_message`` and
            emptied with ``delete_messages``, one key at a time; the source may define
            ``fill_catalog(store, keys, message)`` and ``drop_catalog(store, keys)`` to do it
            faster (untimed) in LlamaIndex's own layout.
        label: Shown in the report.
    """

    requirements: Sequence[str]
    source: str
    label: str = "LlamaIndex"


@dataclass(frozen=True)
class Backend:
    """One backend's benchmark declaration (the ``BENCH`` object of a ``*_bench.py`` file).

    Attributes:
        title: Shown as the report's heading, e.g. ``"RedisChatStore (redis-server 7)"``.
        server: Returns a context manager giving the URL of a real server for the whole run
            (see :func:`service`); every implementation uses this same server.
        ours: Builds our store for that URL (it may add a namespace or table of its own).
        raw: Builds the raw-driver floor for that URL, or None when there is none.
        reference: LlamaIndex's store, or None when LlamaIndex has none.
        notes: Extra lines printed under the table (layout differences worth knowing).
        long_conversation: The long conversation's length at ``BENCH_SCALE=1`` (scaled like
            every volume). Lower it for a server that cannot hold 10,000 messages in every
            implementation's layout, or serves them too slowly for a run of minutes.
        reference_holds: The longest conversation LlamaIndex's store can hold (e.g. under an
            item size limit); a run with longer conversations leaves LlamaIndex out and says so.
        fill_catalog: Where our store keeps a catalog (``Capability.CATALOG``), how to put one
            message under each of many keys fast (untimed set-up: a page of 100 is measured on
            stores of 1,000 to ``largest_catalog`` conversations). Default: ``aadd_messages``,
            many at once on one event loop. A backend with a bulk path (pipelined script calls)
            uses it here, through the store's own write path.
        largest_catalog: The largest catalog at ``BENCH_SCALE=1`` (scaled like every volume).
    """

    title: str
    server: Callable[[], AbstractContextManager[str]]
    ours: Callable[[str], BaseChatStore]
    raw: Callable[[str], RawDriver] | None
    reference: Reference | None
    notes: Sequence[str] = field(default_factory=tuple)
    long_conversation: int = 10_000
    reference_holds: int | None = None
    fill_catalog: Callable[[BaseChatStore, Sequence[str], ChatMessage], None] | None = None
    largest_catalog: int = 100_000


@runtime_checkable
class Task(Protocol):
    """A benchmark that is not a store beside its floor (a command, a tool): it measures itself.

    A ``*_bench.py`` file may define ``BENCH`` as any object with this method instead of a
    :class:`Backend`. The harness prints the report ``run`` returns and writes it to
    ``<name>.md``; an exception fails the run (use one for a limit the benchmark guards).
    """

    def run(self, scale: float) -> str:
        """Measure at ``scale`` (``BENCH_SCALE``) and return the report as markdown."""
        ...


@contextmanager
def service(
    env_var: str, start: Callable[[], LocalServer], url_of: Callable[[LocalServer], str]
) -> Iterator[str]:
    """Yield a server URL: ``env_var`` if set, else a local server from a tests-shared launcher.

    Example: ``service("CHAT_STORE_TEST_REDIS_URL", start_redis,
    lambda s: f"redis://127.0.0.1:{s.port}/0")``. The local server is removed afterwards.
    """
    url = os.environ.get(env_var)
    if url:
        yield url
        return
    server = start()
    try:
        yield url_of(server)
    finally:
        server.cleanup()
