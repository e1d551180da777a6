"""A previous revision of our stores, checked out into a temporary git worktree for one run."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Checkout", "checkout"]

# The folders whose packages a store and its declaration import. The harness itself
# (packages/*/src) stays the current one, so both columns are timed by the same code.
SOURCE_FOLDERS = ("core/src", "integrations/*/src", "tests-shared/src")


@dataclass(frozen=True)
class Checkout:
    """A revision's tree on disk.

    Attributes:
        rev: The revision as the user named it (``main~3``, a tag, a hash).
        commit: Its full commit hash.
        tree: The worktree's folder.
    """

    rev: str
    commit: str
    tree: Path

    def python_path(self) -> list[Path]:
        """The tree's source folders, to go ahead of the installed packages on ``sys.path``.

        Our packages are portions of the ``llama_index`` namespace package: a portion found
        earlier on the path wins, so the revision's core and stores shadow the installed ones.
        """
        return sorted(p for pattern in SOURCE_FOLDERS for p in self.tree.glob(pattern))

    def imported_here(self, files: Mapping[str, str]) -> None:
        """Check that every module file a worker reports comes from this tree.

        Raises:
            RuntimeError: A module was imported from elsewhere (the installed, current code).
        """
        stray = {name: f for name, f in files.items() if not Path(f).is_relative_to(self.tree)}
        if stray or not files:
            raise RuntimeError(
                f"the baseline worker for {self.rev} imported {stray or 'nothing it reported'} "
                f"from outside its worktree {self.tree}"
            )

    def label(self) -> str:
        """Name the revision for the report."""
        return f"{self.rev} ({self.commit[:10]})" if self.rev != self.commit else self.commit[:10]


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(  # noqa: S603 (git with our own arguments)
        ["git", "-C", str(root), *args],  # noqa: S607 (git from PATH, as a developer runs it)
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextmanager
def checkout(root: Path, rev: str) -> Iterator[Checkout]:
    """Check ``rev`` out into a temporary detached worktree of ``root``; remove it afterwards.

    Raises:
        RuntimeError: ``rev`` names no commit, or git cannot add the worktree.
    """
    commit = _git(root, "rev-parse", "--verify", f"{rev}^{{commit}}")
    folder = Path(tempfile.mkdtemp(prefix="chat-store-bench-baseline-"))
    tree = folder / "tree"
    try:
        _git(root, "worktree", "add", "--detach", "--quiet", str(tree), commit)
        try:
            yield Checkout(rev=rev, commit=commit, tree=tree)
        finally:
            _git(root, "worktree", "remove", "--force", str(tree))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
