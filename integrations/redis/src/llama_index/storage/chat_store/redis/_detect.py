"""Telling a Redis Cluster from a single server, and what a cluster asks of a namespace."""

from __future__ import annotations

import inspect
from typing import Any

import redis
import redis.asyncio
from llama_index.storage.chat_store.core import ConfigurationError
from llama_index.storage.chat_store.redis.layout import has_hash_tag

__all__ = ["PLAIN_OPTIONS", "ais_cluster", "check_namespace", "is_cluster"]

PLAIN_OPTIONS = frozenset(inspect.signature(redis.Redis.__init__).parameters) - {"self"}
"""The options a single-server redis-py client takes."""


def check_namespace(namespace: str) -> None:
    """Refuse a namespace whose ``{`` would capture a bucket's hash tag (see :mod:`._buckets`).

    Raises:
        ConfigurationError: ``namespace`` holds ``{`` but no hash tag.
    """
    if "{" in namespace and not has_hash_tag(namespace):
        raise ConfigurationError(
            "in Redis Cluster a namespace holding '{' must be a hash tag such as '{app1}:' "
            "(one slot), or hold no '{' (spread over buckets, each tagged '{nnn}'); got "
            f"namespace={namespace!r}"
        )


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    # Options only a cluster client takes (address_remap, ...) cannot reach a plain one.
    return {name: value for name, value in options.items() if name in PLAIN_OPTIONS}


def is_cluster(url: str, options: dict[str, Any], namespace: str) -> bool:
    """Ask the server at ``url`` whether it is a Redis Cluster node (one ``CLUSTER INFO``).

    A server that refuses the question (cluster support disabled, or an ACL) is not one.

    Raises:
        redis.RedisError: It could not be asked (unreachable, bad credentials).
        ConfigurationError: It is one, and ``namespace`` does not suit it (see
            :func:`check_namespace`).
    """
    client = redis.Redis.from_url(url, **_plain(options))
    try:
        client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call,unused-ignore]
    except redis.ResponseError:
        return False
    finally:
        client.close()
    check_namespace(namespace)
    return True


async def ais_cluster(url: str, options: dict[str, Any], namespace: str) -> bool:
    """Async :func:`is_cluster`."""
    client = redis.asyncio.Redis.from_url(url, **_plain(options))
    try:
        await client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call,unused-ignore]
    except redis.ResponseError:
        return False
    finally:
        await client.aclose()
    check_namespace(namespace)
    return True
