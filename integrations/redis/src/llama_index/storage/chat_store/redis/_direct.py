"""Sending ops over a server's connections without redis-py's layers, or through a client."""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import cache
from time import monotonic
from typing import Any

import redis
import redis.asyncio
from llama_index.storage.chat_store.redis._replies import Op
from redis.asyncio.connection import AbstractConnection as AsyncConnection
from redis.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["AsyncDirect", "Direct", "NotSent", "acall", "call", "packed"]

_CHECK_AFTER = 0.5
"""Seconds idle after which a connection is polled before use (see :class:`Direct`)."""


def _pack(head: bytes, words: int, *groups: Iterable[str]) -> bytes:
    """Return one command in the Redis wire protocol (RESP).

    Args:
        head: Its first words, already packed (see :func:`_bulk`).
        words: How many words the command has in all (``head``'s and the groups').
        groups: The other words, sent UTF-8 encoded.
    """
    parts = [b"*%d\r\n" % words, head]
    add = parts.append
    for group in groups:
        for word in group:
            data = word.encode()
            add(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


@cache
def _bulk(*words: str) -> bytes:
    """Pack ``words`` as RESP bulk strings (the fixed head of a command; cached)."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words)


class NotSent(Exception):  # noqa: N818 (a signal inside the transport, never raised out)
    """Raised from a connection error that happened before the request was sent."""


class Direct:
    """Script calls over a single server's connections, without redis-py's layers.

    It holds the client a store built (``client``), closed with it, and opens connections
    as that client's pool would.

    redis-py 8's pool records metrics and polls the socket on every checkout, and its command
    layer handles retries (we allow none) and reply callbacks (scripts have none): together
    more time than the client's share of the round trip. Here idle connections wait in a list
    (``pop``/``append`` are atomic, so threads share it without a lock). A connection idle
    longer than :data:`_CHECK_AFTER` seconds is polled first, as the pool would, so one the
    server closed meanwhile (a restart, its ``timeout``) is reopened instead of failing the
    call; one whose exchange did not finish is disconnected, never reused half-read.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._pool = client.connection_pool
        self._idle: list[tuple[float, AbstractConnection]] = []
        self._pid = os.getpid()

    def _connection(self) -> AbstractConnection:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
            self._idle, self._pid = [], os.getpid()
        try:
            used, conn = self._idle.pop()
        except IndexError:
            return self._pool.connection_class(**self._pool.connection_kwargs)  # type: ignore[no-any-return]
        if monotonic() - used > _CHECK_AFTER:
            try:
                stale = conn.can_read()  # data nobody asked for: never expected
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                stale = True  # closed by the server
            if stale:
                conn.disconnect()  # type: ignore[no-untyped-call,unused-ignore]
        return conn

    def call(self, op: Op[Any]) -> Any:
        """Run ``op`` in one exchange on an idle connection (EVAL if the server lacks it).

        Raises:
            NotSent: Connecting failed; the request never left.
        """
        conn = self._connection()
        if conn._sock is None:
            try:
                conn.connect()  # type: ignore[no-untyped-call,unused-ignore]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._idle.append((monotonic(), conn))
                raise NotSent from exc
        try:
            conn.send_packed_command((packed(op),), False)  # type: ignore[no-untyped-call,unused-ignore]
            try:
                return conn.read_response()
            except NoScriptError:
                conn.send_packed_command((packed(op, load=True),), False)  # type: ignore[no-untyped-call,unused-ignore]
                return conn.read_response()
        except ResponseError:
            raise  # a whole error reply was read: the connection is fine
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call,unused-ignore]
            raise
        finally:
            self._idle.append((monotonic(), conn))

    def close(self) -> None:
        """Close the idle connections and the client."""
        idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.disconnect()  # type: ignore[no-untyped-call,unused-ignore]
        self.client.close()


class AsyncDirect:
    """:class:`Direct` for one event loop's ``redis.asyncio`` client.

    Used from one loop only, so its idle list needs no lock (nothing awaits between a
    ``pop`` and its use). A connection whose exchange was interrupted (cancelled, timed out,
    cut) is dropped: redis-py has already begun to close it.
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._pool = client.connection_pool
        self._idle: list[tuple[float, AsyncConnection]] = []

    async def _connection(self) -> AsyncConnection:
        try:
            used, conn = self._idle.pop()
        except IndexError:
            return self._pool.connection_class(**self._pool.connection_kwargs)  # type: ignore[no-any-return,unused-ignore]
        if monotonic() - used > _CHECK_AFTER:
            try:
                stale = await conn.can_read()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                stale = True
            if stale:
                await conn.disconnect(nowait=True)
        return conn

    async def call(self, op: Op[Any]) -> Any:
        """Run ``op`` in one exchange on an idle connection (EVAL if the server lacks it).

        Raises:
            NotSent: Connecting failed; the request never left.
        """
        conn = await self._connection()
        if not conn.is_connected:
            try:
                await conn.connect()  # type: ignore[no-untyped-call,unused-ignore]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._idle.append((monotonic(), conn))
                raise NotSent from exc
        try:
            await conn.send_packed_command((packed(op),), False)
            try:
                reply = await conn.read_response()
            except NoScriptError:
                await conn.send_packed_command((packed(op, load=True),), False)
                reply = await conn.read_response()
        except ResponseError:
            self._idle.append((monotonic(), conn))  # a whole error reply was read
            raise
        self._idle.append((monotonic(), conn))
        return reply

    async def aclose(self) -> None:
        """Close the idle connections and the client."""
        idle, self._idle = self._idle, []
        for _, conn in idle:
            await conn.disconnect()
        await self.client.aclose()


def packed(op: Op[Any], *, load: bool = False) -> bytes:
    """``op`` in RESP: its command, or EVALSHA of its script (EVAL with the source: ``load``)."""
    script = op.script
    if script is None:
        return _pack(b"", len(op.args), op.args)
    keys = str(len(op.keys))
    head = _bulk("EVAL", script.source, keys) if load else _bulk("EVALSHA", script.sha, keys)
    return _pack(head, 3 + len(op.keys) + len(op.args), op.keys, op.args)


def call(client: Any, op: Op[Any]) -> Any:
    """Run ``op`` through a redis-py client (EVAL if the server lacks the script)."""
    try:
        return client.execute_command(*op.command())
    except NoScriptError:
        return client.execute_command(*op.command(load=True))


async def acall(client: Any, op: Op[Any]) -> Any:
    """Async :func:`call`."""
    try:
        return await client.execute_command(*op.command())
    except NoScriptError:
        return await client.execute_command(*op.command(load=True))
