"""Optional behaviour a store instance may have.

The required API (every method of :class:`BaseChatStore`) is never a
capability. A capability is reported per instance because it can depend on
configuration (a table without a TTL attribute, a store without a file).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Capability"]


class Capability(str, Enum):
    """Optional behaviour of a chat store instance."""

    PERSISTENT = "persistent"
    """Data survives the process: a new instance over the same storage sees it."""

    SHARED = "shared"
    """Several processes may use the same storage at once without losing writes."""

    TTL = "ttl"
    """Conversations expire ``ttl`` seconds after their last change."""

    NATIVE_ASYNC = "native_async"
    """The ``a*`` methods use an async driver instead of a worker thread."""

    CATALOG = "catalog"
    """``list_conversations``, ``get_conversation`` and ``set_metadata``: a record per
    conversation with its count, times and metadata, paged by key (see ``core.catalog``)."""

    EXACTLY_ONCE = "exactly_once"
    """A change whose request or reply is lost on the network is retried by the store and
    applied once: every change carries an operation id recorded atomically with its effect,
    so a resent change applies nothing and returns what the first application returned."""
