"""An Upstash REST bridge in front of a real redis-server, so the real ``upstash-redis`` runs.

Upstash has no local server. This bridge speaks its REST protocol as the ``upstash-redis``
client uses it, and forwards every command to a real Redis over RESP:

* ``POST /`` with a JSON array ``["RPUSH", "k", "v"]`` runs one command;
  ``POST /pipeline`` runs ``[[...], [...]]`` in order (not atomic); ``POST /multi-exec``
  runs them in MULTI/EXEC (atomic); ``GET|POST /cmd/arg/...`` is the path form.
* ``Authorization: Bearer <token>`` is required: otherwise HTTP 401 with
  ``{"error": "WRONGPASS invalid or missing auth token"}``.
* Replies are ``{"result": ...}`` or ``{"error": "ERR ..."}`` (Redis's text; HTTP 400); a
  pipeline or transaction replies with one such object per command.
* With ``Upstash-Encoding: base64`` every bulk string, also inside arrays, is base64;
  integers and nulls are not; the status ``OK`` stays plain, other statuses are encoded.
* Numbers in a command are sent to Redis as their decimal text.

It listens on 127.0.0.1 only, uses the standard library only, and can be stopped and
restarted on the same port (a dead endpoint for fault tests).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import secrets
import socket
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import pytest

from llama_index.storage.chat_store.testing.services import (
    LocalServer,
    free_port,
    start_python_server,
)

UNAUTHORIZED = "WRONGPASS invalid or missing auth token"


class UpstashEndpoint(NamedTuple):
    """Where an Upstash REST API answers, and its token."""

    url: str
    token: str


class _Status(str):
    """A RESP simple-string reply (``+OK``)."""


class _ReplyError(str):
    """A RESP error reply (``-ERR ...``), kept as a value inside transactions."""


class _Resp:
    """A minimal RESP2 connection to Redis."""

    def __init__(self, host: str, port: int, password: str | None, db: int) -> None:
        self._sock = socket.create_connection((host, port), timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")
        for setup in ((["AUTH", password]) if password else None, (["SELECT", str(db)])):
            if setup:
                reply = self.call(setup)
                if isinstance(reply, _ReplyError):
                    raise ConnectionError(reply)

    def call(self, args: Sequence[bytes | str]) -> Any:
        self.send([args])
        return self.read()

    def send(self, commands: Sequence[Sequence[bytes | str]]) -> None:
        out = bytearray()
        for args in commands:
            out += b"*%d\r\n" % len(args)
            for arg in args:
                data = arg.encode() if isinstance(arg, str) else arg
                out += b"$%d\r\n%s\r\n" % (len(data), data)
        self._sock.sendall(out)

    def read(self) -> Any:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection to Redis closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return _Status(rest.decode())
        if kind == b"-":
            return _ReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read() for _ in range(size)]
        raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _argument(value: Any) -> bytes | str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"ERR command arguments must be strings or numbers, got {value!r}")
    return value if isinstance(value, str) else str(value)


def _command(value: Any) -> list[bytes | str]:
    if not isinstance(value, list) or not value:
        raise ValueError("ERR a command must be a non-empty JSON array")
    return [_argument(v) for v in value]


def _encode(value: Any, base64_mode: bool) -> Any:
    if isinstance(value, list):
        return [_encode(v, base64_mode) for v in value]
    if isinstance(value, _Status):
        return str(value) if value == "OK" or not base64_mode else _b64(value.encode())
    if isinstance(value, bytes):
        return _b64(value) if base64_mode else value.decode("utf-8", "replace")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _reply(value: Any, base64_mode: bool) -> dict[str, Any]:
    if isinstance(value, _ReplyError):
        return {"error": str(value)}
    return {"result": _encode(value, base64_mode)}


class UpstashBridge:
    """The Upstash REST protocol on loopback, in a thread, forwarding to a real Redis.

    Args:
        redis_url: ``redis://[:password@]host:port[/db]`` of the Redis behind the bridge.
        token: The bearer token clients must send (random by default).
        port: The loopback port to serve on (a free one by default).
    """

    def __init__(self, redis_url: str, token: str | None = None, port: int | None = None) -> None:
        parts = urlsplit(redis_url)
        self._redis = (
            parts.hostname or "127.0.0.1",
            parts.port or 6379,
            unquote(parts.password) if parts.password else None,
            int(parts.path.strip("/") or 0),
        )
        self.token = token or secrets.token_urlsafe(24)
        self.port = port or free_port()
        self._pool: queue.LifoQueue[_Resp] = queue.LifoQueue()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The REST URL clients use."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> UpstashEndpoint:
        """The URL and the token."""
        return UpstashEndpoint(self.url, self.token)

    def start(self) -> UpstashBridge:
        """Start serving (again) on the bridge's port."""
        if self._server is not None:
            return self
        handler = type("Handler", (_Handler,), {"bridge": self})
        server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="upstash-bridge", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open client connection (the port then refuses)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        while not self._pool.empty():
            self._pool.get_nowait().close()

    # -- forwarding --------------------------------------------------------------------------

    def _run(self, commands: list[list[bytes | str]], *, atomic: bool) -> Any:
        """Run commands on one Redis connection; return each reply (errors as values)."""
        try:
            resp = self._pool.get_nowait()
        except queue.Empty:
            resp = _Resp(*self._redis)
        replies: list[Any] | _ReplyError
        try:
            if not atomic:
                resp.send(commands)
                replies = [resp.read() for _ in commands]
            else:
                resp.send([["MULTI"], *commands, ["EXEC"]])
                queued = [resp.read() for _ in range(len(commands) + 1)]
                done = resp.read()
                if isinstance(done, _ReplyError):  # EXECABORT: a command was refused
                    errors = [q for q in queued if isinstance(q, _ReplyError)]
                    replies = _ReplyError(f"{done} ({errors[0] if errors else ''})")
                else:
                    replies = done
        except BaseException:
            resp.close()
            raise
        self._pool.put(resp)
        return replies


class _Handler(BaseHTTPRequestHandler):
    """One client connection of a bridge (``start`` subclasses it with ``bridge`` set)."""

    protocol_version = "HTTP/1.1"
    bridge: UpstashBridge

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without NODELAY each reply waits ~40 ms
        # for the client's delayed ACK (Nagle).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.bridge._lock:
            self.bridge._connections.add(self.connection)

    def finish(self) -> None:
        with self.bridge._lock:
            self.bridge._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests read replies, not access logs

    def do_GET(self) -> None:
        self._serve(body=None)

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        self._serve(body=self.rfile.read(size) if size else b"")

    def _serve(self, body: bytes | None) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.bridge.token}":
            return self._send(401, {"error": UNAUTHORIZED})
        base64_mode = self.headers.get("Upstash-Encoding", "").lower() == "base64"
        path = urlsplit(self.path).path.rstrip("/")
        try:
            if path in {"/pipeline", "/multi-exec"}:
                commands = json.loads(body or b"null")
                if not isinstance(commands, list) or not commands:
                    raise ValueError("ERR a pipeline must be a non-empty JSON array")
                replies = self.bridge._run(
                    [_command(c) for c in commands], atomic=path == "/multi-exec"
                )
                if isinstance(replies, _ReplyError):
                    return self._send(400, {"error": str(replies)})
                return self._send(200, [_reply(r, base64_mode) for r in replies])
            if path:  # the path form: /set/key/value
                command: list[bytes | str] = [unquote(p) for p in path[1:].split("/")]
                if body:
                    command.append(body)
            else:
                command = _command(json.loads(body or b"null"))
        except (ValueError, UnicodeDecodeError) as exc:
            message = str(exc) if str(exc).startswith("ERR") else f"ERR {exc}"
            return self._send(400, {"error": message})
        except OSError as exc:
            return self._send(500, {"error": f"ERR Redis unavailable: {exc}"})
        try:
            (reply,) = self.bridge._run([command], atomic=False)
        except OSError as exc:
            return self._send(500, {"error": f"ERR Redis unavailable: {exc}"})
        status = 400 if isinstance(reply, _ReplyError) else 200
        return self._send(status, _reply(reply, base64_mode))

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def start_upstash_bridge(redis_url: str, token: str | None = None) -> UpstashBridge:
    """Start an :class:`UpstashBridge` in front of ``redis_url``; stop it with ``stop()``."""
    return UpstashBridge(redis_url, token).start()


def start_upstash_bridge_process(
    redis_url: str, token: str | None = None
) -> tuple[LocalServer, UpstashEndpoint]:
    """Run an :class:`UpstashBridge` in a child process of its own; stop it with ``cleanup()``.

    See :func:`start_python_server` for why a benchmark wants that.
    """
    token = token or secrets.token_urlsafe(24)
    server = start_python_server("upstash-bridge", __package__, redis_url, token)
    return server, UpstashEndpoint(f"http://127.0.0.1:{server.port}", token)


@pytest.fixture(scope="session")
def upstash_rest(redis_url: str) -> Iterator[UpstashEndpoint]:
    """An Upstash REST endpoint for this test session (URL and token).

    ``CHAT_STORE_TEST_UPSTASH_URL`` and ``CHAT_STORE_TEST_UPSTASH_TOKEN`` point it at a real
    (disposable) Upstash database; otherwise a bridge runs in front of the session's Redis.
    """
    url, token = (os.environ.get(f"CHAT_STORE_TEST_UPSTASH_{n}") for n in ("URL", "TOKEN"))
    if url and token:
        yield UpstashEndpoint(url, token)
        return
    bridge = start_upstash_bridge(redis_url)
    yield bridge.endpoint
    bridge.stop()
