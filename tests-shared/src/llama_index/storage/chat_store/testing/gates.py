"""Gating suite tests on what a store can do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from llama_index.storage.chat_store.core import Capability

__all__ = ["requires"]

_F = TypeVar("_F", bound=Callable[..., Any])


def requires(*capabilities: Capability) -> Callable[[_F], _F]:
    """Run the decorated suite test only on stores that have every capability."""

    def mark(test: _F) -> _F:
        test.__chat_store_requires__ = capabilities  # type: ignore[attr-defined]
        return test

    return mark
