"""Find a server for a test session: environment URL, local binary, testcontainers, or fail."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from llama_index.storage.chat_store.testing.services._process import (
    LocalServer,
    ServiceUnavailableError,
)

__all__ = ["docker_container", "local", "provide", "service_fixture"]

Provider = Callable[[], tuple[str, Callable[[], None]]]


@contextmanager
def provide(
    name: str,
    env_var: str,
    local: Provider | None,
    container: Provider | None,
    how_to: str,
) -> Iterator[str]:
    """Give the URL of a service found by the first way that works here; stop it on exit.

    A session fixture is ``with provide(...) as url: yield url``.

    Raises:
        pytest.fail.Exception: No way worked; the message lists each attempt and how to fix it.
    """
    url = os.environ.get(env_var)
    if url:
        yield url
        return
    attempts = [f"{env_var} is not set"]
    for label, way in (("local binary", local), ("testcontainers", container)):
        if way is None:
            continue
        try:
            url, stop = way()
        except ServiceUnavailableError as exc:
            attempts.append(f"{label}: {exc}")
            continue
        try:
            yield url
        finally:
            stop()
        return
    pytest.fail(
        f"no {name} server for the tests ({'; '.join(attempts)}). To fix: {how_to}", pytrace=False
    )


def service_fixture(
    fixture_name: str,
    name: str,
    env_var: str,
    local: Provider | None,
    container: Provider | None,
    how_to: str,
    *,
    doc: str,
    tidy: Callable[[str], str] = str,
) -> Any:
    """A session fixture ``fixture_name`` giving the URL :func:`provide` finds (``tidy``-ed).

    A backend's plugin module declares its server in one statement:
    ``redis_url = service_fixture("redis_url", "Redis", "CHAT_STORE_TEST_REDIS_URL", ...)``.
    """

    def fixture() -> Iterator[str]:
        with provide(name, env_var, local, container, how_to) as url:
            yield tidy(url)

    fixture.__name__ = fixture.__qualname__ = fixture_name
    fixture.__doc__ = doc
    return pytest.fixture(scope="session", name=fixture_name)(fixture)


def docker_container(make: Callable[[], Any], url_of: Callable[[Any], str]) -> Provider:
    """The way to a service in a testcontainers container.

    ``make()`` builds the container (importing testcontainers inside it), ``url_of(container)``
    says where the service answers once started.
    """

    def run() -> tuple[str, Callable[[], None]]:
        try:
            container = make()
            container.start()
        except ImportError as exc:
            raise ServiceUnavailableError("testcontainers is not installed") from exc
        except Exception as exc:  # docker.errors.DockerException and friends: no engine here
            raise ServiceUnavailableError(f"no Docker engine ({type(exc).__name__})") from exc
        return url_of(container), container.stop

    return run


def local(start: Callable[[], LocalServer], url_of: Callable[[LocalServer], str]) -> Provider:
    """The way to a service started here: ``start()`` launches it, ``url_of(server)`` says where."""

    def run() -> tuple[str, Callable[[], None]]:
        server = start()
        return url_of(server), server.cleanup

    return run
