"""Azurite (Microsoft's Azure Storage emulator, Table service) on a free loopback port.

Azurite is the npm package ``azurite``; its ``azurite-table`` command is looked up on
``PATH``, then in ``$CHAT_STORE_NODE_PREFIX`` (default
``~/.cache/llama-index-chat-store/node``), where ``integrations/azure/ci/install`` puts it.
"""

from __future__ import annotations

import http.client
import os
import shutil
from pathlib import Path
from typing import Any

from llama_index.storage.chat_store.testing.services import (
    LocalServer,
    ServiceUnavailableError,
    docker_container,
    local,
    service_fixture,
)

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
"""The emulator's well-known development account (public, documented by Microsoft)."""

HOW_TO = (
    "run integrations/azure/ci/install (npm install --prefix "
    "~/.cache/llama-index-chat-store/node azurite; needs node and npm), or put azurite-table "
    "on PATH, or set CHAT_STORE_TEST_AZURITE_URL=http://host:port/devstoreaccount1 to a "
    "disposable Azurite table endpoint"
)


def node_prefix() -> Path:
    """Where ci/install puts npm packages for the tests."""
    configured = os.environ.get("CHAT_STORE_NODE_PREFIX")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "llama-index-chat-store" / "node"


def find_azurite() -> str | None:
    """Return the path of ``azurite-table``, or None when it is not installed."""
    found = shutil.which("azurite-table")
    if found:
        return found
    cached = node_prefix() / "node_modules" / ".bin" / "azurite-table"
    return str(cached) if cached.exists() else None


def azurite_endpoint(port: int, host: str = "127.0.0.1") -> str:
    """Return the table endpoint of the dev account on an Azurite port."""
    return f"http://{host}:{port}/{AZURITE_ACCOUNT}"


def azurite_connection_string(endpoint: str) -> str:
    """Return the connection string of the dev account at a table endpoint."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"TableEndpoint={endpoint};"
    )


def azurite_ready(port: int) -> bool:
    """Return whether Azurite answers a real request (list tables) on the port."""
    try:
        from azure.data.tables import TableServiceClient
    except ImportError:  # the SDK is not needed to run Azurite: fall back to plain HTTP
        return _answers_http(port)
    client = TableServiceClient.from_connection_string(
        azurite_connection_string(azurite_endpoint(port)), retry_total=0, connection_timeout=1
    )
    try:
        with client:
            list(client.list_tables(results_per_page=1).by_page())
        return True
    except Exception:  # not up yet: connection refused, reset, half-started server
        return False


def _answers_http(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", f"/{AZURITE_ACCOUNT}/Tables")
        conn.getresponse().read()
        conn.close()
        return True
    except OSError:
        return False


def start_azurite() -> LocalServer:
    """Start ``azurite-table`` (in-memory) on a free port; restartable (data is lost).

    Raises:
        ServiceUnavailableError: Azurite is not installed or did not start.
    """
    binary = find_azurite()
    if binary is None:
        raise ServiceUnavailableError(
            f"azurite-table is neither on PATH nor in {node_prefix()}/node_modules/.bin"
        )

    def command(port: int, workdir: Path) -> list[str]:
        # Port 0 is not an option: Azurite then never reports the port it took.
        return [binary, "--tableHost", "127.0.0.1", "--tablePort", str(port),
                "--inMemoryPersistence", "--silent", "--disableTelemetry",
                "--skipApiVersionCheck"]  # fmt: skip

    return LocalServer("azurite-table", command, azurite_ready).start()


def _azurite_image() -> Any:
    from testcontainers.azurite import AzuriteContainer

    return AzuriteContainer()


azurite_table_endpoint = service_fixture(
    "azurite_table_endpoint", "Azurite", "CHAT_STORE_TEST_AZURITE_URL",
    local(start_azurite, lambda s: azurite_endpoint(s.port)),
    docker_container(
        _azurite_image,
        lambda c: azurite_endpoint(int(c.get_exposed_port(10002)), c.get_container_host_ip()),
    ),
    HOW_TO,
    tidy=lambda url: url.rstrip("/"),
    doc="The table endpoint (``http://127.0.0.1:P/devstoreaccount1``) of a real Azurite "
    "(authenticate with AZURITE_ACCOUNT / AZURITE_KEY or azurite_connection_string).",
)  # fmt: skip
