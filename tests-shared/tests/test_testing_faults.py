"""The fault proxy against a real TCP server that applies line requests and answers each."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from llama_index.storage.chat_store.testing.faults import FaultKind, FaultProxy


class LineServer:
    """Applies each line it receives (records it), then answers ``OK <line>``."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                self.applied.append(line.decode().strip())
                stream.write(b"OK " + line)
                stream.flush()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def server() -> Iterator[LineServer]:
    s = LineServer()
    yield s
    s.close()


@pytest.fixture
def proxy(server: LineServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", server.port) as p:
        yield p


def _ask(sock: socket.socket, line: str) -> str:
    sock.sendall(line.encode() + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError("closed")
        answer += chunk
    return answer.decode().strip()


def _connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=10)


def test_requests_pass_through_unchanged(server: LineServer, proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        assert [_ask(sock, f"r{i}") for i in range(3)] == ["OK r0", "OK r1", "OK r2"]
    assert server.applied == ["r0", "r1", "r2"]
    assert proxy.requests == 3


def test_a_dropped_request_never_reaches_the_server(server: LineServer, proxy: FaultProxy) -> None:
    fault = proxy.inject(FaultKind.DROP_REQUEST, match=b"^write")
    with _connect(proxy) as sock:
        assert _ask(sock, "read") == "OK read"
        with pytest.raises(ConnectionError):
            _ask(sock, "write 1")
    assert server.applied == ["read"]
    assert fault.fired == 1
    with _connect(proxy) as sock:  # once only: the next connection works
        assert _ask(sock, "write 2") == "OK write 2"
    assert server.applied == ["read", "write 2"]


def test_a_dropped_reply_comes_after_the_server_applied_the_request(
    server: LineServer, proxy: FaultProxy
) -> None:
    fault = proxy.inject(FaultKind.DROP_REPLY, nth=2)
    with _connect(proxy) as sock:
        assert _ask(sock, "a") == "OK a"
        with pytest.raises(ConnectionError):
            _ask(sock, "b")
    assert server.applied == ["a", "b"]
    assert fault.fired == 1


def test_a_stall_holds_the_request_then_forwards_it(server: LineServer, proxy: FaultProxy) -> None:
    proxy.inject(FaultKind.STALL, seconds=0.3)
    with _connect(proxy) as sock:
        started = time.monotonic()
        assert _ask(sock, "slow") == "OK slow"
        assert time.monotonic() - started >= 0.3  # the stall happened (a floor, not a timing)
    assert server.applied == ["slow"]


def test_faults_repeat_when_asked_and_can_be_cleared(server: LineServer, proxy: FaultProxy) -> None:
    fault = proxy.inject(FaultKind.DROP_REQUEST, match="x", times=None)
    for _ in range(3):
        with _connect(proxy) as sock, pytest.raises(ConnectionError):
            _ask(sock, "x")
    assert fault.fired == 3
    proxy.clear()
    with _connect(proxy) as sock:
        assert _ask(sock, "x") == "OK x"
    assert server.applied == ["x"]


def test_dropping_every_connection_cuts_open_clients(server: LineServer, proxy: FaultProxy) -> None:
    sock = _connect(proxy)
    assert _ask(sock, "a") == "OK a"
    proxy.drop_connections()
    with pytest.raises((ConnectionError, OSError)):
        _ask(sock, "b")
    sock.close()
    assert server.applied == ["a"]


def test_a_bad_schedule_is_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="nth counts from 1"):
        proxy.inject(FaultKind.DROP_REPLY, nth=0)


def test_a_fault_with_a_probability_hits_a_seeded_share_of_requests(server: LineServer) -> None:
    """probability=0.25 hits about a quarter of the requests, the same ones for the same seed.

    If this fails: rate-driven soaks cut every request, none, or a different set per run.
    """
    hits = []
    for _ in range(2):
        with FaultProxy("127.0.0.1", server.port) as proxy:
            fault = proxy.inject(FaultKind.STALL, times=None, probability=0.25, seed="s")
            with _connect(proxy) as sock:
                assert [_ask(sock, f"r{i}") for i in range(200)][-1] == "OK r199"
            hits.append(fault.fired)
    assert hits[0] == hits[1]
    assert 25 <= hits[0] <= 75
    with FaultProxy("127.0.0.1", server.port) as proxy, pytest.raises(ValueError, match="prob"):
        proxy.inject(FaultKind.STALL, probability=0)


def test_proxies_sharing_a_schedule_count_requests_to_all(
    server: LineServer, proxy: FaultProxy
) -> None:
    """Proxies in front of a cluster's nodes share faults: nth counts requests through any."""
    other = LineServer()
    with FaultProxy("127.0.0.1", other.port, sharing=proxy) as second:
        fault = proxy.inject(FaultKind.DROP_REQUEST, nth=2)
        with _connect(proxy) as first_sock, _connect(second) as second_sock:
            assert _ask(first_sock, "a") == "OK a"
            with pytest.raises(ConnectionError):
                _ask(second_sock, "b")
            assert _ask(first_sock, "c") == "OK c"
        assert fault.fired == 1
        assert (server.applied, other.applied) == (["a", "c"], [])
        proxy.inject(FaultKind.DROP_REQUEST)
        second.clear()  # clears the shared schedule
        with _connect(proxy) as sock:
            assert _ask(sock, "d") == "OK d"
    other.close()
