"""Benchmark harness: each chat store beside its raw driver and LlamaIndex's own store.

A backend adds rows with one file ``integrations/<name>/bench/<name>_bench.py`` defining
``BENCH = Backend(...)``; see the package README. ``chat-store-bench`` (``make bench``) finds
every such file.
"""

from llama_index.storage.chat_store.bench._declare import Backend, RawDriver, Reference, service

__all__ = ["Backend", "RawDriver", "Reference", "service"]
