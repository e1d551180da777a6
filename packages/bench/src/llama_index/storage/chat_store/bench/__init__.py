"""Benchmark harness: each chat store beside its raw driver and LlamaIndex's own store.

A backend adds rows with one file ``integrations/<name>/bench/<name>_bench.py`` defining
``BENCH = Backend(...)``; a benchmark that is not a backend (the ``chat-store`` command's, in
``packages/cli/bench/cli_bench.py``) defines a :class:`Task` instead. See the package README.
``chat-store-bench`` (``make bench``) finds every such file.
"""

from llama_index.storage.chat_store.bench._declare import (
    QUICK_SCALE,
    Backend,
    RawDriver,
    Reference,
    Task,
    is_quick,
    service,
)
from llama_index.storage.chat_store.bench._ops import sample_messages

__all__ = [
    "QUICK_SCALE",
    "Backend",
    "RawDriver",
    "Reference",
    "Task",
    "is_quick",
    "sample_messages",
    "service",
]
