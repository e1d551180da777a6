"""Adding a backend is one folder: a renamed copy of the smallest backend passes the whole suite.

Upstash's folder (the smallest backend on the kit that brings its own test server) is copied
into a temporary workspace as ``newcomer``, and only files inside the copy change: its import
path, distribution, store class, test-service entry point and test file names. The copy is
installed with core, this package and the Redis package it builds on (Upstash itself is not
installed) into a throwaway venv, at the versions of ``uv.lock``; its conformance module then
runs the whole suite there. This package names nothing of the copy: the suite and the copy's
test server (found through the entry point) take it as they find it.

The copy keeps Upstash's URL schemes, driver and fixture names: a newcomer changes those
along with the driver.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "integrations" / "upstash"
PACKAGES = [REPO / "core", REPO / "tests-shared", REPO / "integrations" / "redis"]
RENAMES = {
    "chat_store.upstash": "chat_store.newcomer",
    "chat-store-upstash": "chat-store-newcomer",
    "UpstashChatStore": "NewcomerChatStore",
    'upstash = "llama_index.storage.chat_store.newcomer.testing"': (
        'newcomer = "llama_index.storage.chat_store.newcomer.testing"'
    ),
}


def _run(argv: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip


def _copy_as_newcomer(workspace: Path) -> Path:
    """Copy Upstash's folder to ``workspace/newcomer``, renamed inside the copy only."""
    copy = shutil.copytree(SOURCE, workspace / "newcomer", ignore=shutil.ignore_patterns("*cache*"))
    namespace = copy / "src" / "llama_index" / "storage" / "chat_store"
    (namespace / "upstash").rename(namespace / "newcomer")
    for path in sorted(copy.rglob("*")):
        if path.suffix in (".py", ".toml", ".md"):
            text = path.read_text("utf-8")
            for old, new in RENAMES.items():
                text = text.replace(old, new)
            path.write_text(text, "utf-8")
        if path.name.startswith("test_upstash_"):
            path.rename(path.with_name(path.name.replace("upstash", "newcomer")))
    return copy


def test_a_copied_backend_passes_the_suite_without_editing_this_package(tmp_path: Path) -> None:
    """A renamed copy of a backend's folder, installed beside core, runs the suite green.

    If this fails: a backend reaches outside its folder (a name this package or core lists,
    a private import of the original's modules), or the services plugin no longer finds a
    backend's test server through the entry point.
    """
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to build the copy's venv: pip install uv", pytrace=False)
    copy = _copy_as_newcomer(tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    pins = tmp_path / "pins.txt"
    for step in (
        [uv, "export", "--quiet", "--frozen", "--no-hashes", "--no-header", "--no-annotate",
         "--no-emit-workspace", "--package", "llama-index-storage-chat-store-upstash",
         "--group", "test", "--output-file", pins],
        [uv, "venv", "--quiet", "--python", sys.executable, tmp_path / "venv"],
        [uv, "pip", "install", "--quiet", "--no-sources", "--python", python,
         "--constraints", pins, *PACKAGES, copy],
    ):  # fmt: skip
        done = _run(step, REPO)
        assert done.returncode == 0, f"{step[1]} {step[2]} failed:\n{done.stderr[-3000:]}"

    done = _run(
        [python, "-m", "pytest", "tests/test_newcomer_conformance.py", "-q", "-p",
         "no:cacheprovider", "-o", "asyncio_mode=auto",
         "-o", "asyncio_default_fixture_loop_scope=function"],
        copy,
    )  # fmt: skip

    output = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"the copy's suite failed:\n{output}"
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed is not None, output
    assert int(passed.group(1)) > 100, output  # the whole suite ran, not a stub
