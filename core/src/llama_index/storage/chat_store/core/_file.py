"""Writing a file atomically: temp file, fsync, rename (the JSON file stores use it)."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import stat
import time
from pathlib import Path

__all__ = ["write_atomically"]

_STALE_AFTER = 60.0
"""Seconds after which a temp file of ours is taken for one a killed writer left behind."""


def write_atomically(path: Path, text: str) -> None:
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # Like open(): a new file gets 0666 less the umask; an existing file keeps its mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(f.fileno(), stat.S_IMODE(os.stat(path).st_mode))
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    _remove_stale_temp_files(path)


def _remove_stale_temp_files(path: Path) -> None:
    """Delete temp files of ``path`` that killed writers left (older than a minute)."""
    cutoff = time.time() - _STALE_AFTER
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
