"""A progress bar on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    """Count messages processed; draws a bar only on a terminal (and never with ``quiet``)."""

    def __init__(self, description: str, *, quiet: bool = False) -> None:
        enabled = not quiet and sys.stderr.isatty()
        self._bar: tqdm | None = (
            tqdm(desc=description, unit=" msg", unit_scale=True, file=sys.stderr, leave=False)
            if enabled
            else None
        )

    def update(self, n: int) -> None:
        """Add ``n`` processed messages."""
        if self._bar is not None and n:
            self._bar.update(n)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
