"""``chat-store export`` against a real redis-server: wall time and peak memory of the command.

Found by ``chat-store-bench`` (``make bench``) as the ``cli`` benchmark. It fills a Redis
namespace with ``BENCH_SCALE`` x 1,000,000 messages across 1,000 conversations (the harness's
varied sample messages), then runs the installed ``chat-store export`` in a subprocess, as a user
does, over an empty store, over a tenth of the conversations (``--keys``) and over all of them.
The dump is read from the pipe and its lines counted (an export that stops short fails the run);
peak memory is the export process's own peak RSS (``RUSAGE_CHILDREN`` of a small launcher).
Export streams pages of ``--batch`` messages, so its peak RSS must stay under 200 MB for any
volume: above it the run fails.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from llama_index.storage.chat_store.bench import is_quick, sample_messages, service
from llama_index.storage.chat_store.core import chat_store_from_url, message_from_json
from llama_index.storage.chat_store.redis.testing import start_redis

MESSAGES = 1_000_000
CONVERSATIONS = 1_000
REPEATS = 3
LIMIT_MB = 200
CHAT_STORE = Path(sys.executable).parent / "chat-store"


_RSS_MARK = "\nchat-store-bench peak RSS KiB: "
# Linux counts the parent's resident memory at fork() in a child's ru_maxrss, and the harness
# holds other backends' data by now: a small launcher process runs the export as ITS child,
# so the figure is the export's own peak.
_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    f"sys.stderr.write({_RSS_MARK!r} + str(peak))\n"
    "sys.exit(code)\n"
)


@dataclass(frozen=True)
class Export:
    """One ``chat-store export`` run."""

    seconds: float
    peak_rss: int  # bytes
    lines: int
    size: int  # bytes of dump
    end: dict[str, int]  # the dump's closing totals


def export(url: str, keys: Sequence[str] = ()) -> Export:
    """Run ``chat-store export URL -q [--keys ...]``; read the dump from the pipe.

    Raises:
        RuntimeError: The command failed.
    """
    argv = [sys.executable, "-c", _LAUNCHER, str(CHAT_STORE), "export", url, "-q",
            *(["--keys", *keys] if keys else [])]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines = size = 0
    tail = b""
    while chunk := proc.stdout.read(1 << 20):
        lines += chunk.count(b"\n")
        size += len(chunk)
        tail = (tail + chunk)[-4096:]
    errors, _, peak_kib = proc.stderr.read().decode(errors="replace").rpartition(_RSS_MARK)
    proc.wait()
    seconds = time.perf_counter() - started
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv[3:6])} exited {proc.returncode}: {errors.strip()}")
    end: dict[str, int] = json.loads(tail.splitlines()[-1])["end"]
    return Export(seconds, int(peak_kib) * 1024, lines, size, end)


def fill(url: str, messages: int, conversations: int) -> list[str]:
    """Write ``messages`` sample messages evenly across ``conversations`` keys; return the keys."""
    pool = [message_from_json(m) for m in sample_messages()]
    per = messages // conversations
    keys = [f"conversation/{k:04d}" for k in range(conversations)]
    with chat_store_from_url(url) as store:
        for k, key in enumerate(keys):
            store.add_messages(key, [pool[(k * per + j) % len(pool)] for j in range(per)])
    return keys


@dataclass(frozen=True)
class Row:
    """Repeated exports of one selection."""

    label: str
    conversations: int
    runs: list[Export]

    @property
    def messages(self) -> int:
        return self.runs[0].end["messages"]

    @property
    def seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def peak_mb(self) -> float:
        return max(run.peak_rss for run in self.runs) / 2**20


def _table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| export | conversations | messages | dump | wall time | messages/s | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        size = row.runs[0].size / 2**20
        rate = f"{row.messages / row.seconds:,.0f}" if row.messages else "—"
        lines.append(
            f"| {row.label} | {row.conversations:,} | {row.messages:,} | {size:,.1f} MB | "
            f"{row.seconds:.2f} s | {rate} | {row.peak_mb:.0f} MB |"
        )
    return lines


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


class ExportBench:
    """The ``cli`` benchmark (a harness ``Task``)."""

    def run(self, scale: float) -> str:
        """Measure at ``scale``; return the report.

        Raises:
            RuntimeError: A dump is incomplete, or the peak RSS exceeds the limit.
        """
        started = time.monotonic()
        # Each export is a process start (seconds of imports): a quick run exports once.
        repeats = 1 if is_quick(scale) else REPEATS
        total = max(100, round(MESSAGES * scale))
        conversations = min(CONVERSATIONS, total // 10)
        server = service(
            "CHAT_STORE_TEST_REDIS_URL", start_redis, lambda s: f"redis://127.0.0.1:{s.port}/0"
        )
        with server as base:
            client = redis.Redis.from_url(base)
            version = client.info("server")["redis_version"]
            client.close()
            namespace = f"chat-store-bench:cli:{uuid.uuid4().hex[:8]}:"
            url = f"{base}?namespace={namespace}"
            print(f"[cli] filling {total:,} messages in {conversations:,} keys", file=sys.stderr)
            rows = []
            try:
                keys = fill(url, total, conversations)
                per = total // conversations
                tenth = keys[: max(1, len(keys) // 10)]
                selections = [  # label, URL, --keys, expected conversations
                    ("empty store", f"{url}empty:", [], 0),
                    ("`--keys`, a tenth of the conversations", url, tenth, len(tenth)),
                    ("whole store", url, [], len(keys)),
                ]
                for label, where, only, expected in selections:
                    print(f"[cli] export: {label}", file=sys.stderr)
                    runs = [export(where, only) for _ in range(repeats)]
                    for run in runs:
                        if (run.end, run.lines) != (
                            {"keys": expected, "messages": expected * per},
                            expected * per + 2,
                        ):
                            raise RuntimeError(f"incomplete dump for {label}: {run}")
                    rows.append(Row(label, expected, runs))
            finally:
                with chat_store_from_url(url) as store:
                    store.clear()
        lines = [
            "# Benchmark: cli — `chat-store export` (streaming dump) from redis-server",
            "",
            f"BENCH_SCALE={scale:g}: {total:,} messages in {conversations:,} conversations of "
            f"{total // conversations:,}, the varied sample messages of the backend rows (text, "
            "unicode, tool calls), in a RedisChatStore namespace. Each row runs the installed "
            f"`chat-store export URL -q` (pages of 500 messages) {repeats} times as a subprocess "
            "whose dump the harness reads from the pipe: wall time is the median (process start "
            "included), peak RSS the largest `ru_maxrss` of the export process (taken by a small "
            "launcher: Linux counts a forking parent's memory in its child's).",
            "",
            f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs (load "
            f"average {_load()} at the end), Python {platform.python_version()}, redis-server "
            f"{version}; run {time.strftime('%Y-%m-%d %H:%M')} in "
            f"{time.monotonic() - started:.0f} s.",
            "",
            *_table(rows),
            "",
        ]
        peak = max(row.peak_mb for row in rows)
        if peak > LIMIT_MB:
            raise RuntimeError("\n".join([*lines, f"peak RSS {peak:.0f} MB > {LIMIT_MB} MB"]))
        lines.append(
            f"Peak RSS limit {LIMIT_MB} MB: the largest was {peak:.0f} MB. Memory does not grow "
            "with the volume: the command reads `iter_keys` and pages, and writes each page "
            "as it goes."
        )
        return "\n".join(lines) + "\n"


BENCH = ExportBench()
