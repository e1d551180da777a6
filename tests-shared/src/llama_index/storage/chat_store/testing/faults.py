"""A fault-injecting TCP proxy for any store and its server or emulator.

:class:`FaultProxy` listens on a loopback port and relays every connection to the real
server, byte for byte (TLS-free protocols: Redis, PostgreSQL, HTTP to emulators). A test
points the store at :attr:`FaultProxy.port` instead of the server's and schedules faults
with :meth:`FaultProxy.inject`, each aimed at one request: the n-th request, or the n-th
one whose first bytes match a pattern. What happens to that request:

* ``DROP_REQUEST``: the connection closes before the request reaches the server (nothing
  applied; the client sees a dropped connection).
* ``DROP_REPLY``: the request reaches the server, which applies it and answers; the
  connection closes before the answer reaches the client. The worst case for a client: its
  change landed and it cannot know.
* ``STALL``: the request is held for :attr:`Fault.seconds` before it is forwarded.

A fault with a ``probability`` below 1 hits each matching request with that chance (seeded,
so a run can be replayed), for soaks at a fault rate rather than one scripted cut.

A "request" is what the client sends between two answers on one connection: the bytes it
writes after the server last wrote, which is exact for request/response protocols (Redis,
PostgreSQL's extended protocol, HTTP/1.1) and approximate for pipelined ones (a pipeline
is one request).
"""

from __future__ import annotations

import contextlib
import enum
import random
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Fault", "FaultKind", "FaultProxy", "address_of", "url_at"]

_CHUNK = 65536


def address_of(url: str, default_port: int) -> tuple[str, int]:
    """``(host, port)`` of a server URL (``default_port`` when the URL names none)."""
    where = urlsplit(url)
    if where.hostname is None:
        raise ValueError(f"{url!r} names no host")
    return where.hostname, where.port or default_port


def url_at(url: str, host: str, port: int) -> str:
    """Return ``url`` with its host and port replaced (user, path and query kept).

    The same server reached at another address, such as a :class:`FaultProxy`'s.
    """
    where = urlsplit(url)
    userinfo, at, _ = where.netloc.rpartition("@")
    return urlunsplit(where._replace(netloc=f"{userinfo}{at}{host}:{port}"))


class FaultKind(enum.Enum):
    """Where a fault cuts a request's round trip."""

    DROP_REQUEST = "drop the request before it reaches the server"
    DROP_REPLY = "drop the server's answer before it reaches the client"
    STALL = "hold the request before forwarding it"


@dataclass
class Fault:
    """One scheduled fault; :attr:`fired` counts the requests it hit.

    Attributes:
        kind: What happens to the request.
        match: A regular expression searched in the request's first bytes (``None``: any).
        nth: Hit the n-th matching request counted from when the fault was injected.
        times: How many matching requests to hit, from the n-th on (``None``: all of them).
        seconds: How long a ``STALL`` holds the request.
        probability: The chance that each request from the n-th on is hit (1: every one).
        seed: Seeds the draws when ``probability`` is below 1.
    """

    kind: FaultKind
    match: bytes | None = None
    nth: int = 1
    times: int | None = 1
    seconds: float = 0.0
    probability: float = 1.0
    seed: int | str | None = None
    seen: int = 0
    fired: int = 0
    _pattern: re.Pattern[bytes] | None = field(default=None, repr=False)
    _draws: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.nth < 1:
            raise ValueError(f"nth counts from 1, not {self.nth}")
        if not 0 < self.probability <= 1:
            raise ValueError(f"probability must be in (0, 1], not {self.probability}")
        self._draws.seed(self.seed)
        self._pattern = None if self.match is None else re.compile(self.match, re.DOTALL)

    def _hits(self, request: bytes) -> bool:
        if self._pattern is not None and not self._pattern.search(request):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.fired >= self.times):
            return False
        if self.probability < 1 and self._draws.random() >= self.probability:
            return False
        self.fired += 1
        return True


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.answered = True  # the next client bytes start a new request
        self.swallow_reply = False
        self.lock = threading.Lock()

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """Relay loopback connections to ``(host, port)``, injecting scheduled faults.

    Use as a context manager (or call :meth:`close`). :attr:`requests` counts every request
    relayed or cut, for tests that need to know how many a call made.
    """

    def __init__(self, host: str, port: int, *, sharing: FaultProxy | None = None) -> None:
        """Relay to ``(host, port)``, sharing the faults of proxy ``sharing`` if given.

        One schedule for the proxies in front of the nodes of one cluster: ``nth`` counts
        the requests to all of them.
        """
        self.upstream = (host, port)
        self.requests = 0
        self._faults: list[Fault] = []
        self._state = threading.Lock()
        if sharing is not None:
            self._faults, self._state = sharing._faults, sharing._state
        self._links: set[_Link] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    def inject(
        self,
        kind: FaultKind,
        *,
        match: bytes | str | None = None,
        nth: int = 1,
        times: int | None = 1,
        seconds: float = 0.0,
        probability: float = 1.0,
        seed: int | str | None = None,
    ) -> Fault:
        """Schedule a fault (see :class:`Fault`); return it (its ``fired`` counts hits)."""
        pattern = match.encode() if isinstance(match, str) else match
        fault = Fault(kind, pattern, nth, times, seconds, probability, seed)
        with self._state:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget every scheduled fault."""
        with self._state:
            self._faults.clear()

    def drop_connections(self) -> None:
        """Close every open connection now (as a server restart or a network cut would)."""
        with self._state:
            links = list(self._links)
        for link in links:
            link.close()

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop_connections()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaultProxy(127.0.0.1:{self.port} -> {self.upstream[0]}:{self.upstream[1]})"

    # -- relaying -------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()  # the server is down: the client sees a refused-like close
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            with self._state:
                self._links.add(link)
            threading.Thread(target=self._upstream, args=(link,), daemon=True).start()
            threading.Thread(target=self._downstream, args=(link,), daemon=True).start()

    def _fault_for(self, request: bytes) -> Fault | None:
        with self._state:
            self.requests += 1
            for fault in self._faults:
                if fault._hits(request):
                    return fault
        return None

    def _upstream(self, link: _Link) -> None:
        """Client to server: where requests start and faults are applied."""
        with self._ending(link):
            while True:
                data = link.client.recv(_CHUNK)
                if not data:
                    return
                with link.lock:
                    starts, link.answered = link.answered, False
                fault = self._fault_for(data) if starts else None
                if fault is not None and fault.kind is FaultKind.DROP_REQUEST:
                    return
                if fault is not None and fault.kind is FaultKind.STALL:
                    threading.Event().wait(fault.seconds)
                if fault is not None and fault.kind is FaultKind.DROP_REPLY:
                    link.swallow_reply = True
                link.server.sendall(data)

    def _downstream(self, link: _Link) -> None:
        """Server to client: answers, dropped when the request's fault says so."""
        with self._ending(link):
            while True:
                data = link.server.recv(_CHUNK)
                if not data:
                    return
                if link.swallow_reply:
                    return  # the server applied the request and answered; the client never hears
                with link.lock:
                    link.answered = True
                link.client.sendall(data)

    @contextlib.contextmanager
    def _ending(self, link: _Link) -> Iterator[None]:
        try:
            yield
        except OSError:
            pass
        finally:
            link.close()
            with self._state:
                self._links.discard(link)
