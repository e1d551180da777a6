"""Find a server for a test session: environment URL, local binary, testcontainers, or fail."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from llama_index.storage.chat_store.testing.services._process import (
    LocalServer,
    ServiceUnavailableError,
)

__all__ = ["docker_container", "local", "provide"]

Provider = Callable[[], tuple[str, Callable[[], None]]]


def provide(
    name: str,
    env_var: str,
    local: Provider | None,
    container: Provider | None,
    how_to: str,
) -> tuple[str, Callable[[], None]]:
    """Return ``(url, stop)`` for a service by the first way that works here.

    Raises:
        pytest.fail.Exception: No way worked; the message lists each attempt and how to fix it.
    """
    url = os.environ.get(env_var)
    if url:
        return url, lambda: None
    attempts = [f"{env_var} is not set"]
    for label, way in (("local binary", local), ("testcontainers", container)):
        if way is None:
            continue
        try:
            return way()
        except ServiceUnavailableError as exc:
            attempts.append(f"{label}: {exc}")
    pytest.fail(
        f"no {name} server for the tests ({'; '.join(attempts)}). To fix: {how_to}", pytrace=False
    )


def docker_container(
    factory: Callable[[], Any], url_of: Callable[[Any], str]
) -> tuple[str, Callable[[], None]]:
    try:
        container = factory()
        container.start()
    except ImportError as exc:
        raise ServiceUnavailableError("testcontainers is not installed") from exc
    except Exception as exc:  # docker.errors.DockerException and friends: no engine here
        raise ServiceUnavailableError(f"no Docker engine ({type(exc).__name__})") from exc
    return url_of(container), container.stop


def local(
    start: Callable[[], LocalServer], url_of: Callable[[LocalServer], str]
) -> Callable[[], tuple[str, Callable[[], None]]]:
    def run() -> tuple[str, Callable[[], None]]:
        server = start()
        return url_of(server), server.cleanup

    return run
