"""A third-party package outside the workspace registers ``acme://`` and passes the suite.

``data/acme_chat_store`` is installed with core and the testing package (from this checkout)
into a throwaway venv, as a user outside this repository would; its own tests then resolve
``acme://`` through the registry and run the conformance suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1]
TESTING = CORE.parent / "tests-shared"
ACME = Path(__file__).parent / "data" / "acme_chat_store"


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_acme_package_registers_its_scheme_and_passes_the_suite(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to build the third-party venv: pip install uv", pytrace=False)
    acme = shutil.copytree(ACME, tmp_path / "acme_chat_store")
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    packages = [str(CORE), str(TESTING), str(acme)]
    for step in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", str(python), *packages],
    ):
        done = _run(step, tmp_path)
        assert done.returncode == 0, f"{' '.join(step[:3])} failed:\n{done.stderr[-3000:]}"

    done = _run([str(python), "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"], acme)

    assert done.returncode == 0, f"acme's tests failed:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed is not None
    assert int(passed.group(1)) > 70, done.stdout[-2000:]  # the whole suite ran, not a stub
