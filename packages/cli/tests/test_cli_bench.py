"""The ``cli`` benchmark (bench/cli_bench.py) runs through the harness at a tiny scale.

Only that it runs and reports complete dumps is checked here, never a timing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from llama_index.storage.chat_store.bench._cli import declarations, main

ROOT = Path(__file__).resolve().parents[3]


def test_the_export_benchmark_reports_every_selection(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert declarations(ROOT)["cli"] == ROOT / "packages" / "cli" / "bench" / "cli_bench.py"
    monkeypatch.setenv("CHAT_STORE_TEST_REDIS_URL", redis_url)
    assert main(["cli", "--root", str(ROOT), "--out", str(tmp_path), "--scale", "0.002"]) == 0
    report = (tmp_path / "cli.md").read_text(encoding="utf-8")
    assert "BENCH_SCALE=0.002: 2,000 messages in 200 conversations of 10" in report
    for label, conversations, messages in [
        ("empty store", 0, 0),
        ("`--keys`, a tenth of the conversations", 20, 200),
        ("whole store", 200, 2_000),
    ]:
        assert re.search(rf"\| {re.escape(label)} \| {conversations:,} \| {messages:,} \|", report)
    assert "Peak RSS limit 200 MB" in report
    client = redis.Redis.from_url(redis_url)
    try:
        left = list(client.scan_iter(match="chat-store-bench:cli:*"))
        # Only the records of recent changes stay (a retry still in flight must find its op
        # id after a clear), each expiring on its own.
        assert [k for k in left if not k.endswith(b"\x00ops")] == []
        assert all(client.pttl(k) > 0 for k in left)
    finally:
        client.close()
