"""Real servers for the tests, as a pytest plugin (loaded through the ``pytest11`` entry point).

Each service fixture gives a server for the whole test session, found in this order:

1. a URL from the environment (``CHAT_STORE_TEST_REDIS_URL``, ...);
2. a local binary started on a free port in a temp dir;
3. a testcontainers container, when a Docker engine answers;
4. otherwise the test fails with a message saying how to get the server. Never a skip:
   a green run means the code was tested.

Backends add their own services in modules next to this one and fixtures here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.testing.services import _postgres, _redis
from llama_index.storage.chat_store.testing.services._process import (
    LocalServer,
    ServiceUnavailableError,
    free_port,
)

__all__ = [
    "LocalServer",
    "ServiceUnavailableError",
    "free_port",
    "postgres_url",
    "provide",
    "redis_url",
    "start_postgres",
    "start_redis",
]

start_redis = _redis.start_redis
start_postgres = _postgres.start_postgres


def provide(
    name: str,
    env_var: str,
    local: Callable[[], tuple[str, Callable[[], None]]] | None,
    container: Callable[[], tuple[str, Callable[[], None]]] | None,
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


def _docker_container(
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


def _local(
    start: Callable[[], LocalServer], url_of: Callable[[LocalServer], str]
) -> Callable[[], tuple[str, Callable[[], None]]]:
    def run() -> tuple[str, Callable[[], None]]:
        server = start()
        return url_of(server), server.cleanup

    return run


def _redis_container() -> tuple[str, Callable[[], None]]:
    def factory() -> Any:
        from testcontainers.redis import RedisContainer

        return RedisContainer("redis:7")

    def url_of(c: Any) -> str:
        return f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0"

    return _docker_container(factory, url_of)


def _postgres_container() -> tuple[str, Callable[[], None]]:
    def factory() -> Any:
        from testcontainers.postgres import PostgresContainer

        return PostgresContainer("postgres:15", driver=None)

    def url_of(c: Any) -> str:
        return str(c.get_connection_url())

    return _docker_container(factory, url_of)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a real Redis server for this test session (database 0, disposable)."""
    url, stop = provide(
        "Redis", "CHAT_STORE_TEST_REDIS_URL",
        _local(start_redis, lambda s: f"redis://127.0.0.1:{s.port}/0"),
        _redis_container, _redis.HOW_TO,
    )  # fmt: skip
    yield url
    stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL (``postgresql://...``) of a real PostgreSQL database for this test session."""
    url, stop = provide(
        "PostgreSQL", "CHAT_STORE_TEST_POSTGRES_URL",
        _local(start_postgres, _postgres.postgres_url),
        _postgres_container, _postgres.HOW_TO,
    )  # fmt: skip
    yield url
    stop()
