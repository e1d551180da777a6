"""The real LlamaIndex packages, in a separate virtual environment, driven through a subprocess.

LlamaIndex's ``llama-index-storage-chat-store-*`` packages install the same import paths as
ours, so they can never share an environment with this project. A reference environment is
created on first use (``uv venv`` + ``uv pip install``; needs the package index), cached under
``$CHAT_STORE_REFERENCE_CACHE`` (default ``~/.cache/llama-index-chat-store-reference``) keyed
by its requirements, and reused by later runs, tests and ``make bench``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

__all__ = ["LLAMA_INDEX_CORE", "ReferencePython", "llama_index_reference", "reference_python"]

LLAMA_INDEX_CORE = "llama-index-core==0.14.25"
"""The LlamaIndex release our formats are checked against."""
_BASE_REQUIREMENTS = (LLAMA_INDEX_CORE, "pydantic<2.14")


class ReferencePython:
    """An interpreter with LlamaIndex packages installed, isolated from this project."""

    def __init__(self, python: Path) -> None:
        self.python = python

    def run(
        self, script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> str:
        """Run Python source in the reference environment; return its stdout.

        Raises:
            AssertionError: The script failed (its stderr is in the message).
        """
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(script)
        try:
            done = subprocess.run(  # noqa: S603 (our own interpreter and script)
                [str(self.python), f.name, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **(env or {})},
                check=False,
            )
        finally:
            os.unlink(f.name)
        assert done.returncode == 0, f"reference script failed:\n{done.stderr[-4000:]}"
        return done.stdout

    def run_json(self, script: str, *args: str, env: dict[str, str] | None = None) -> object:
        """Run a script that prints one JSON document; return it parsed."""
        return json.loads(self.run(script, *args, env=env))


def reference_python(requirements: Sequence[str]) -> ReferencePython:
    """Return a cached reference environment with llama-index-core plus ``requirements``.

    Raises:
        RuntimeError: uv or the package index is unavailable (the message says which).
    """
    wanted = sorted({*_BASE_REQUIREMENTS, *requirements})
    digest = hashlib.sha256(json.dumps([sys.version_info[:2], wanted]).encode()).hexdigest()[:16]
    cache = Path(
        os.environ.get("CHAT_STORE_REFERENCE_CACHE")
        or Path.home() / ".cache" / "llama-index-chat-store-reference"
    )
    venv = cache / digest
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return ReferencePython(python)
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError(
            "uv is needed to build the LlamaIndex reference environment (pip install uv)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    # Test runs of several packages at once may want the same environment: one builds it.
    with open(cache / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            _build(uv, venv, python, wanted)
    return ReferencePython(python)


def _build(uv: str, venv: Path, python: Path, wanted: list[str]) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    interpreter = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for step in (
        [uv, "venv", "--quiet", "--python", interpreter, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", str(python), *wanted],
    ):
        done = subprocess.run(step, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            raise RuntimeError(
                f"cannot build the LlamaIndex reference environment ({' '.join(step[:3])}): "
                f"{done.stderr[-2000:]}"
            )
    (venv / ".complete").write_text("\n".join(wanted))


@pytest.fixture(scope="session")
def llama_index_reference() -> Callable[[Sequence[str]], ReferencePython]:
    """``llama_index_reference(requirements)``: a reference interpreter with those packages.

    Example: ``ref = llama_index_reference(["llama-index-storage-chat-store-redis==0.8.0"])``,
    then ``ref.run(script, *args)``. Fails (never skips) when it cannot be built.
    """

    def build(requirements: Sequence[str]) -> ReferencePython:
        try:
            return reference_python(requirements)
        except RuntimeError as exc:
            pytest.fail(
                f"{exc}. To fix: make the package index reachable once (the result is cached).",
                pytrace=False,
            )

    return build
