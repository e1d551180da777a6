"""A real three-node Redis Cluster on loopback (three redis-server processes, no replicas)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llama_index.storage.chat_store.redis.testing._server import redis_ping
from llama_index.storage.chat_store.testing.services import (
    LocalServer,
    ServiceUnavailableError,
    free_port,
    provide,
)

HOW_TO = (
    "install redis-server and redis-cli (Debian/Ubuntu: apt-get install redis-server), or set "
    "CHAT_STORE_TEST_REDIS_CLUSTER_URL=redis://host:port to one node of a disposable cluster"
)


def _cluster_state(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"CLUSTER INFO\r\n")
            return sock.recv(4096).decode(errors="replace")
    except OSError:
        return ""


def start_redis_cluster(nodes: int = 3, timeout: float = 30.0) -> list[LocalServer]:
    """Start ``nodes`` cluster-enabled redis-servers and join them into one cluster.

    Returns the servers (stop them with ``cleanup()``); every slot is served when it returns.

    Raises:
        ServiceUnavailableError: redis-server or redis-cli is missing, or the cluster did not
            form in time.
    """
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise ServiceUnavailableError("redis-server and redis-cli must be on PATH")

    def command(port: int, workdir: Path) -> list[str]:
        # The bus port defaults to port + 10000, which overflows for free ports above 55535.
        return [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                "--cluster-port", str(free_port()),
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000"]  # fmt: skip

    servers: list[LocalServer] = []
    try:
        for _ in range(nodes):
            servers.append(LocalServer("redis-cluster-node", command, redis_ping).start())
        create = subprocess.run(  # noqa: S603 (argv built by us)
            [cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in servers),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            raise ServiceUnavailableError(f"redis-cli --cluster create failed: {create.stdout}")
        deadline = time.monotonic() + timeout
        while not all("cluster_state:ok" in _cluster_state(s.port) for s in servers):
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(f"cluster not ready after {timeout} s")
            time.sleep(0.05)
    except BaseException:
        for server in servers:
            server.cleanup()
        raise
    return servers


def _local_cluster() -> tuple[str, Callable[[], None]]:
    servers = start_redis_cluster()

    def stop() -> None:
        for server in servers:
            server.cleanup()

    return f"redis://127.0.0.1:{servers[0].port}", stop


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """The URL of one node of a real three-node Redis Cluster for this test session."""
    with provide(
        "Redis Cluster", "CHAT_STORE_TEST_REDIS_CLUSTER_URL", _local_cluster, None, HOW_TO
    ) as url:
        yield url
