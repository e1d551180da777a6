"""A real redis-server on a free loopback port."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

from llama_index.storage.chat_store.testing.services import (
    LocalServer,
    ServiceUnavailableError,
    docker_container,
    local,
    service_fixture,
)

HOW_TO = (
    "install redis-server (Debian/Ubuntu: apt-get install redis-server; macOS: brew install "
    "redis), or set CHAT_STORE_TEST_REDIS_URL=redis://host:port/0 to a disposable server"
)


def redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether a Redis server answers PING on the port (with or without a password)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            # A server with requirepass answers NOAUTH: it is up all the same.
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def start_redis(*extra_args: str) -> LocalServer:
    """Start redis-server (no persistence) on a free port; extra args go on its command line.

    Raises:
        ServiceUnavailableError: redis-server is not installed or did not start.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailableError("redis-server is not on PATH")

    def command(port: int, workdir: Path) -> list[str]:
        return [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", *extra_args]  # fmt: skip

    return LocalServer("redis-server", command, redis_ping).start()


def _redis_image() -> Any:
    from testcontainers.redis import RedisContainer

    return RedisContainer("redis:7")


redis_url = service_fixture(
    "redis_url", "Redis", "CHAT_STORE_TEST_REDIS_URL",
    local(start_redis, lambda s: f"redis://127.0.0.1:{s.port}/0"),
    docker_container(
        _redis_image, lambda c: f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0"
    ),
    HOW_TO,
    doc="The URL of a real Redis server for this test session (database 0, disposable).",
)  # fmt: skip
