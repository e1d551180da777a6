"""The ``chat-store`` command: inspect, export, import, copy and check chat stores by URL.

Any URL an installed backend registers works (``memory://``, ``json:///path``,
``redis://...``, ``postgresql://...``). ``main`` is the console script; the dump
format used by ``export`` and ``import`` is public for tools that read or write it.
"""

from llama_index.storage.chat_store.cli._app import main
from llama_index.storage.chat_store.cli.dump import (
    DUMP_FORMAT,
    DUMP_VERSION,
    DumpTotals,
    dump_end,
    dump_header,
    dump_line,
    read_dump,
)

__all__ = [
    "DUMP_FORMAT",
    "DUMP_VERSION",
    "DumpTotals",
    "dump_end",
    "dump_header",
    "dump_line",
    "main",
    "read_dump",
]
