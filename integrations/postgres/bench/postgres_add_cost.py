"""Where add_message's time goes: the bench's add, taken apart one piece at a time.

Each row is timed as the harness times ``add_message`` (an untimed add and pop, the timed add,
then a pop; rows interleaved; medians), on the store's own held connection: the bench's raw
floor (bare psycopg 3 ``INSERT`` into a table without a conversation row), our message
``INSERT`` alone, plus the conversation row's ``UPDATE`` in the same statement, plus the
operation record (our whole statement), the whole ``add_message``, and our ``INSERT`` again
after a bare ``DELETE`` as the pop instead of ours (what a heavier statement just before
costs the next one on this machine). Prints a Markdown table; writes nothing.

    .venv/bin/python integrations/postgres/bench/postgres_add_cost.py [repeats]
"""

# Table names come from the store's own statements, never user input; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import importlib.util
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import TextClause, text

from llama_index.storage.chat_store.bench._adapters import OursAdapter, RawAdapter
from llama_index.storage.chat_store.bench._ops import Sampler
from llama_index.storage.chat_store.core import message_to_json
from llama_index.storage.chat_store.postgres.testing import start_postgres

LENGTHS = (10, 10_000)


def _bench_declaration() -> Any:
    spec = importlib.util.spec_from_file_location(
        "postgres_bench", Path(__file__).with_name("postgres_bench.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BENCH


class _Statement:
    """An adapter whose add is one statement on the store's connection, its pop ours or bare."""

    def __init__(self, ours: OursAdapter, clause: TextClause, bare_pop: TextClause | None):
        self.store, self.clause, self.bare_pop = ours.store, clause, bare_pop
        self.messages = ours.messages
        self.texts = [message_to_json(m) for m in ours.messages]
        self.calls = 0

    def add(self, key: str, i: int) -> None:
        self.calls += 1
        params = {"key": key, "message": self.texts[i % len(self.texts)], "ttl": None}
        self.store._connections().fetch(self.clause, {**params, "op": f"cost-{self.calls}"})

    def delete_last(self, key: str) -> None:
        if self.bare_pop is None:
            self.store.delete_last_message(key)
        else:
            self.store._connections().fetch(self.bare_pop, {"key": key})

    def fill(self, key: str, n: int) -> None:
        self.store.set_messages(key, [self.messages[i % len(self.messages)] for i in range(n)])


def _samplers(url: str, workdir: str) -> dict[str, Sampler]:
    bench = _bench_declaration()
    ours = OursAdapter(bench.ours, url)
    ours.store.add_message("cost-warm", ours.messages[0])
    statements = ours.store._resolved.statements  # type: ignore[union-attr]
    full = statements.append_one.text
    m = re.search(r"INSERT INTO (\S+) \(key, message\)", full)
    assert m is not None
    insert = text(
        f"INSERT INTO {m[1]} (key, message) VALUES "
        "(CAST(:key AS text), CAST(:message AS json)) RETURNING id"
    )
    no_record = re.sub(r", rec AS \(.*?FROM conv\)", "", full)
    assert no_record != full
    bare_pop = text(
        f"DELETE FROM {m[1]} WHERE key = :key AND id = "
        f"(SELECT id FROM {m[1]} WHERE key = :key ORDER BY id DESC LIMIT 1)"
    )
    adapters: dict[str, Any] = {
        "raw floor (bench)": RawAdapter(bench.raw, url),
        "our message INSERT": _Statement(ours, insert, None),
        "+ conversation row UPDATE": _Statement(ours, text(no_record), None),
        "+ operation record (our statement)": _Statement(ours, statements.append_one, None),
        "add_message": ours,
        "our message INSERT, after a bare pop": _Statement(ours, insert, bare_pop),
    }
    return {label: Sampler(adapter, workdir) for label, adapter in adapters.items()}


def main() -> None:
    """Start PostgreSQL, measure every row at each length, print the table."""
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    server = start_postgres()
    medians: dict[tuple[str, int], float] = {}
    try:
        url = f"postgresql://test@127.0.0.1:{server.port}/postgres"
        with tempfile.TemporaryDirectory() as workdir:
            samplers = _samplers(url, workdir)
            for n in LENGTHS:
                for label, sampler in samplers.items():
                    sampler.fill(f"{label}-{n}", n)
                samples: dict[str, list[float]] = {label: [] for label in samplers}
                for _ in range(repeats):
                    for label, sampler in samplers.items():
                        samples[label].append(sampler.sample("add", f"{label}-{n}", n, warm=True))
                medians.update({(k, n): statistics.median(v) for k, v in samples.items()})
    finally:
        server.stop()
        server.cleanup()
    print(f"Medians of {repeats} interleaved repeats (µs, and x the raw floor):\n")
    print("| add of one message | " + " | ".join(f"{n:,} messages" for n in LENGTHS) + " |")
    print("|---|" + "---:|" * len(LENGTHS))
    for label in samplers:
        cells = []
        for n in LENGTHS:
            value, floor = medians[(label, n)], medians[("raw floor (bench)", n)]
            cells.append(f"{value * 1e6:.0f} µs ({value / floor:.2f}x)")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
