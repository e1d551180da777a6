"""A real redis-server on a free loopback port."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from llama_index.storage.chat_store.testing.services._process import (
    LocalServer,
    ServiceUnavailableError,
)

__all__ = ["redis_ping", "start_redis"]

HOW_TO = (
    "install redis-server (Debian/Ubuntu: apt-get install redis-server; macOS: brew install "
    "redis), or set CHAT_STORE_TEST_REDIS_URL=redis://host:port/0 to a disposable server"
)


def redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether a Redis server answers PING on the port."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
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
