"""Tablestore for the tests: an in-process emulator that speaks the SDK's wire protocol.

No Tablestore emulator exists anywhere, so this one is ours. It serves the SDK's real
protocol on a loopback port (protobuf bodies, PlainBuffer rows with CRC-8, signed requests
and responses, protobuf errors), so the unmodified ``OTSClient`` and ``AsyncOTSClient`` run
against it. It covers tables (create, list, describe, delete), PutRow, GetRow, UpdateRow,
DeleteRow, GetRange in both directions with limits and continuation keys, BatchGetRow,
BatchWriteRow, row existence and column conditions, and enforces the service's limits (2 MB
per attribute value, 1 KB per primary key value, BatchGetRow 100 rows, BatchWriteRow 200
rows / 4 MB, GetRange pages of 5000 rows / 4 MB, 5 MB per request body, 64 tables per
instance).

It uses the SDK's own protobuf messages (the SDK is a dependency of this package). Set
``CHAT_STORE_TEST_TABLESTORE_URL`` to ``https://KEY_ID:KEY_SECRET@HOST/INSTANCE`` to run the
same tests against a real, disposable instance instead.
"""

from __future__ import annotations

import atexit
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import pytest

from llama_index.storage.chat_store.tablestore.testing._http import EmulatorServer
from llama_index.storage.chat_store.testing.services import (
    LocalServer,
    free_port,
    service_fixture,
    start_python_server,
)

HOW_TO = (
    "set CHAT_STORE_TEST_TABLESTORE_URL=https://KEY_ID:KEY_SECRET@HOST/INSTANCE to a disposable "
    "Tablestore instance, or leave it unset for the emulator of this package"
)


@dataclass(frozen=True)
class TablestoreConnection:
    """What a client needs to reach a Tablestore instance."""

    endpoint: str
    instance_name: str
    access_key_id: str
    access_key_secret: str

    @classmethod
    def from_url(cls, url: str) -> TablestoreConnection:
        """Parse ``http(s)://KEY_ID:KEY_SECRET@HOST[:PORT]/INSTANCE``."""
        parts = urlsplit(url)
        if not (parts.username and parts.password and parts.hostname and parts.path.strip("/")):
            raise ValueError("expected http(s)://KEY_ID:KEY_SECRET@HOST[:PORT]/INSTANCE")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return cls(
            endpoint=f"{parts.scheme}://{netloc}",
            instance_name=parts.path.strip("/"),
            access_key_id=unquote(parts.username),
            access_key_secret=unquote(parts.password),
        )


class TablestoreEmulator:
    """A running emulator on a free loopback port; restartable on the same port, data kept.

    Attributes:
        port: The TCP port it listens on.
        instance_name, access_key_id, access_key_secret: What clients must present.
    """

    def __init__(
        self,
        instance_name: str = "chat-store-test",
        *,
        port: int | None = None,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
    ) -> None:
        self._server = EmulatorServer(
            port or free_port(),
            instance_name,
            access_key_id or f"test-key-{secrets.token_hex(4)}",
            access_key_secret or secrets.token_hex(16),
        )
        atexit.register(self.cleanup)

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1."""
        return self._server.port

    @property
    def instance_name(self) -> str:
        """The emulated instance's name."""
        return self._server.instance_name

    @property
    def access_key_id(self) -> str:
        """The one access key id the emulator accepts."""
        return self._server.access_key_id

    @property
    def access_key_secret(self) -> str:
        """The secret that signs requests and responses."""
        return self._server.access_key_secret

    @property
    def endpoint(self) -> str:
        """The endpoint URL to give ``OTSClient``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://KEY_ID:KEY_SECRET@127.0.0.1:PORT/INSTANCE`` (:class:`TablestoreConnection`)."""
        return _url(self.access_key_id, self.access_key_secret, self.port, self.instance_name)

    @property
    def running(self) -> bool:
        """Whether it accepts connections."""
        return self._server.running

    def start(self) -> TablestoreEmulator:
        """Start (or restart) serving on the same port."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections; the tables stay for the next start()."""
        self._server.stop()

    def cleanup(self) -> None:
        """Stop serving (the data goes with the object)."""
        self.stop()


def start_tablestore(instance_name: str = "chat-store-test") -> TablestoreEmulator:
    """Start a Tablestore emulator in this process on a free loopback port."""
    return TablestoreEmulator(instance_name).start()


def start_tablestore_process(instance_name: str = "chat-store-test") -> tuple[LocalServer, str]:
    """Run a Tablestore emulator in a child process of its own (see :func:`start_python_server`).

    Returns:
        The server (stop it with ``cleanup()``) and its :class:`TablestoreConnection` URL.
    """
    key_id, secret = f"test-key-{secrets.token_hex(4)}", secrets.token_hex(16)
    server = start_python_server("tablestore-emulator", __package__, instance_name, key_id, secret)
    return server, _url(key_id, secret, server.port, instance_name)


def _url(key_id: str, secret: str, port: int, instance_name: str) -> str:
    return (
        f"http://{quote(key_id, safe='')}:{quote(secret, safe='')}@127.0.0.1:{port}/{instance_name}"
    )


def _local() -> tuple[str, Callable[[], None]]:
    emulator = start_tablestore()
    return emulator.url, emulator.cleanup


tablestore_url = service_fixture(
    "tablestore_url", "Tablestore", "CHAT_STORE_TEST_TABLESTORE_URL", _local, None, HOW_TO,
    doc="``http(s)://KEY_ID:KEY_SECRET@HOST[:PORT]/INSTANCE`` of a Tablestore for this session.",
)  # fmt: skip


@pytest.fixture(scope="session")
def tablestore_connection(tablestore_url: str) -> TablestoreConnection:
    """The endpoint, instance and credentials of this session's Tablestore."""
    return TablestoreConnection.from_url(tablestore_url)
