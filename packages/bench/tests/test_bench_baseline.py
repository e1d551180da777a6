"""A previous revision of our stores measured beside the current one; results go to scratch."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from llama_index.storage.chat_store.bench._baseline import Checkout, checkout
from llama_index.storage.chat_store.bench._cli import BUILTIN, find_root, main
from llama_index.storage.chat_store.bench._run import _Worker

ROOT = find_root(Path(__file__).resolve().parent)
SIMPLE = BUILTIN / "simple_bench.py"


@pytest.fixture
def root() -> Path:
    assert ROOT is not None, "these tests run inside the workspace's git repository"
    return ROOT


def _worktrees(root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "worktree", "list", "--porcelain"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_the_baseline_worker_imports_the_revision_from_its_worktree(
    root: Path, tmp_path: Path
) -> None:
    """A baseline worker's core and store modules are the checkout's files, not the installed ones.

    If this fails: the worktree's source folders are not ahead of the installed packages on
    the worker's PYTHONPATH, so the "baseline" would measure the current code.
    """
    with checkout(root, "HEAD") as tree:
        assert f"worktree {tree.tree}\n" in _worktrees(root)
        worker = _Worker.ours("simple", SIMPLE, str(tmp_path), tree)
        try:
            worker.connect("memory://")
            files = worker.hello["modules"]
            core = tree.tree / "core/src/llama_index/storage/chat_store/core/__init__.py"
            assert files["llama_index.storage.chat_store.core"] == str(core)
            assert all(Path(f).is_relative_to(tree.tree) for f in files.values()), files
            worker.fill("k", 10)
            assert worker.sample("count", "k", 10) > 0
        finally:
            worker.close()
    assert not tree.tree.exists()
    assert str(tree.tree) not in _worktrees(root)  # the worktree is removed with its folder


def test_a_worker_importing_the_current_code_is_refused(root: Path, tmp_path: Path) -> None:
    """A checkout without source folders leaves the worker on the installed code: an error.

    If this fails: the check on the worker's module files accepts the current code as the
    baseline, and a broken path would report a ratio of 1 as a finding.
    """
    empty = Checkout(rev="nothing", commit="0" * 40, tree=tmp_path / "tree")
    empty.tree.mkdir()
    worker = _Worker.ours("simple", SIMPLE, str(tmp_path), empty)
    try:
        with pytest.raises(RuntimeError, match="from outside its worktree"):
            worker.connect("memory://")
    finally:
        worker.close()


def test_a_baseline_of_head_measures_like_head(root: Path, tmp_path: Path) -> None:
    """``--baseline HEAD`` adds a baseline column, with a ratio and its interval, for that revision.

    If this fails: the baseline column or its ratios are missing, or the baseline is not the
    revision asked for.
    """
    out = tmp_path / "results"
    code = main(["simple", "--root", str(root), "--baseline", "HEAD", "--out", str(out),
                 "--ops", "get_all", "--scale", "0.01", "--repeats", "9"])  # fmt: skip
    assert code == 0
    table = (out / "simple-get_all-baseline.md").read_text()
    header = "| operation | messages | ours | baseline | raw floor | LlamaIndex | ours/baseline |"
    assert header in table
    head = _git_head(root)
    assert f"at HEAD ({head[:10]}), in a worker process" in table
    ratios = re.findall(r"\| get_messages \(all\) \| ([\d,]+) \| [^|]+ \| [^|]+ \| [^|]+ \| "
                        r"[^|]+ \| ([\d.]+)x \(([\d.]+)-([\d.]+)\) \|", table)  # fmt: skip
    assert [n for n, *_ in ratios] == ["10", "100"], table
    # No bound on the ratio itself: a timing depends on the machine's load (a CI run with two
    # packages at a time measured HEAD against HEAD at 0.59x); the harness's own check that the
    # baseline imported from its worktree is tested above.
    ratio, low, high = (float(v) for v in ratios[-1][1:])
    assert low <= ratio <= high
    assert str(root / "bench") not in str(out)
    assert f"worktree {root}" in _worktrees(root)  # only the temporary worktree went away


def _git_head(root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_an_unknown_revision_is_a_usage_error(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["simple", "--root", str(root), "--baseline", "no-such-rev-xyz", "--out",
              str(tmp_path)])  # fmt: skip
    assert exit_.value.code == 2
    assert "no-such-rev-xyz" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
