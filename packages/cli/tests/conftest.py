"""Fixtures for the chat-store CLI tests: run the command in-process, stores by URL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llama_index.storage.chat_store.cli import main

RAWLIST_SITE = Path(__file__).parent / "data" / "rawlist_site"

collect_ignore = ["data"]


@dataclass
class Result:
    code: int
    out: str
    err: str


Run = Callable[..., Result]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``chat-store ARGS`` in this process; return the exit code and the captured output."""

    def run(*argv: str) -> Result:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def json_url(tmp_path: Path) -> Callable[[str], str]:
    """``json_url("a")`` is the URL of the JSON file store ``a.json`` in this test's temp dir."""
    return lambda name: f"json://{tmp_path / name}.json"


@pytest.fixture
def rawlist(monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    """Install the fake ``rawlist://`` backend (see data/rawlist_site/README.md)."""
    monkeypatch.syspath_prepend(str(RAWLIST_SITE))
    import chat_store_rawlist

    yield chat_store_rawlist.RawListStore
    chat_store_rawlist.RawListStore.raw.clear()
