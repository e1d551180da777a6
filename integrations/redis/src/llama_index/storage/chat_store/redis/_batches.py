"""Running a :class:`._buckets.Batch` on Redis Cluster: one pipelined request per node.

redis-py's cluster pipeline asks the server for the keys of every EVALSHA it queues (one
``COMMAND GETKEYS`` round trip per script call), which made a catalog page over the buckets
cost about 20 ms. Our ops name their keys, so the batch is grouped by the node serving each
op's first key (all of an op's keys share its slot) and sent to each node as one plain
pipeline. Replies saying the script is not loaded there, or the slot moved (resharding), are
sent again one by one through the cluster client, which loads and follows redirects.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio
from llama_index.storage.chat_store.core import ChatStoreError, ConfigurationError
from llama_index.storage.chat_store.redis._direct import acall, call, packed
from llama_index.storage.chat_store.redis._replies import Op
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

__all__ = ["arun", "run"]

_AGAIN = (NoScriptError, MovedError, AskError, TryAgainError)
"""Replies after which the op is sent again through the cluster client."""


# redis-py before 5.3 needs a command name to check out a connection; later ones warn on it.
_COMMAND_NAME: tuple[str, ...] = (
    ()
    if inspect.signature(redis.ConnectionPool.get_connection).parameters["command_name"].default
    is None
    else ("EVALSHA",)
)


ErrorOf = Callable[[Exception, Op[Any]], ChatStoreError]
"""The core error for a reply refusing an op."""


def _no_cluster_client() -> ConfigurationError:
    return ConfigurationError(
        "a namespace without a hash tag is spread over Redis Cluster's nodes: pass a "
        "RedisCluster client, or none (the store builds one)"
    )


def _checked(ops: Sequence[Op[Any]], replies: list[Any], error: ErrorOf) -> list[Any]:
    for op, reply in zip(ops, replies, strict=True):
        if isinstance(reply, Exception):
            raise error(reply, op) from reply
    return replies


def _by_node(nodes: Sequence[Any]) -> dict[str, tuple[Any, list[int]]]:
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, node in enumerate(nodes):
        groups.setdefault(node.name, (node, []))[1].append(i)
    return groups


def run(client: Any, ops: Sequence[Op[Any]], error: ErrorOf) -> list[Any]:
    """Send ``ops`` to their nodes; their replies in order.

    Every node is sent its ops before any reply is read, so the nodes work at once.

    Raises:
        ChatStoreError: ``error(reply, op)`` for the first op the server refused.
        ConfigurationError: ``client`` is not a cluster client.
        redis.RedisError: A connection failed.
    """
    if not isinstance(client, redis.RedisCluster):
        raise _no_cluster_client()
    replies: list[Any] = [None] * len(ops)
    groups = _by_node([client.get_node_from_key(op.keys[0]) for op in ops])  # type: ignore[no-untyped-call,unused-ignore]
    taken: list[tuple[Any, Any, list[int]]] = []
    try:
        for node, positions in groups.values():
            pool = node.redis_connection.connection_pool
            conn = pool.get_connection(*_COMMAND_NAME)
            taken.append((pool, conn, positions))
            conn.send_packed_command([packed(ops[i]) for i in positions], False)
        for _, conn, positions in taken:
            for i in positions:
                try:
                    replies[i] = conn.read_response()
                except ResponseError as exc:
                    replies[i] = exc
    except BaseException:
        for _, conn, _ in taken:
            conn.disconnect()  # an exchange cut halfway: never reused half-read
        raise
    finally:
        for pool, conn, _ in taken:
            pool.release(conn)
    for i, reply in enumerate(replies):
        if isinstance(reply, _AGAIN):
            try:
                replies[i] = call(client, ops[i])
            except ResponseError as exc:
                replies[i] = exc
    return _checked(ops, replies, error)


async def arun(client: Any, ops: Sequence[Op[Any]], error: ErrorOf) -> list[Any]:
    """Async :func:`run`."""
    if not isinstance(client, redis.asyncio.RedisCluster):
        raise _no_cluster_client()
    await client.initialize()  # a no-op once the client knows the slots
    replies: list[Any] = [None] * len(ops)
    groups = _by_node([client.get_node_from_key(op.keys[0]) for op in ops])
    answers = await asyncio.gather(
        *(_anode(node, [ops[i] for i in positions]) for node, positions in groups.values())
    )
    for (_, positions), answer in zip(groups.values(), answers, strict=True):
        for i, reply in zip(positions, answer, strict=True):
            replies[i] = reply
    for i, reply in enumerate(replies):
        if isinstance(reply, _AGAIN):
            try:
                replies[i] = await acall(client, ops[i])
            except ResponseError as exc:
                replies[i] = exc
    return _checked(ops, replies, error)


async def _anode(node: Any, ops: list[Op[Any]]) -> list[Any]:
    conn = node.acquire_connection()
    try:
        await conn.send_packed_command([packed(op) for op in ops], False)
        replies: list[Any] = []
        for _ in ops:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        await conn.disconnect()  # an exchange cut halfway: never reused half-read
        raise
    finally:
        node.release(conn)
    return replies
