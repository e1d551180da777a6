"""How the Redis list layout reads its replies: the step type, decoders, and error replies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendUnavailableError,
    ChatMessage,
    ChatStoreError,
    ConfigurationError,
    CorruptDataError,
)
from llama_index.storage.chat_store.core.backend import messages_removed
from llama_index.storage.chat_store.core.catalog import (
    ConversationInfo,
    decode_metadata,
    from_epoch_ms,
    metadata_too_large,
)
from llama_index.storage.chat_store.core.messages import messages_from_json
from llama_index.storage.chat_store.redis._scripts import Script

__all__ = ["Op", "reply_error"]

T = TypeVar("T")


@dataclass(slots=True)  # not frozen: built on every call, and frozen __init__ is slower
class Op(Generic[T]):
    """One round trip and how to read its reply.

    A script call, or with ``script=None`` the single command ``args`` (e.g. a plain LRANGE).
    """

    script: Script | None
    keys: tuple[str, ...]
    args: tuple[str, ...]
    decode: Callable[[Any], T]
    key: str | None = None
    """The conversation key, named in errors."""

    def command(self, *, load: bool = False) -> list[Any]:
        """Its words: ``args``, or EVALSHA of the script (EVAL with the source: ``load``)."""
        if self.script is None:
            return [*self.args]
        head = ("EVAL", self.script.source) if load else ("EVALSHA", self.script.sha)
        return [*head, len(self.keys), *self.keys, *self.args]


def text(value: Any) -> str:
    # redis-py returns bytes; upstash-redis returns str (already decoded from base64).
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def nothing(reply: Any) -> None:
    return None


def messages(
    key: str, start: int | None, *, removed: bool = False
) -> Callable[[Any], list[ChatMessage]]:
    """Decode a list of message JSON; ``start=None``: the list's last messages (from ``-len``)."""

    def decode(items: Any) -> list[ChatMessage]:
        if start is None:
            return messages(key, -len(items or []))(items)
        if removed:
            # The removal is done (it is atomic, and refusing it would leave corrupt data that
            # no delete can remove): core's error says so and keeps what was removed.
            stored = [(start + i, item) for i, item in enumerate(items or [])]
            return messages_removed(key, stored, storage=_STORAGE)
        return messages_from_json(items or [], key=key, start=start)

    return decode


_STORAGE = "Redis"


def positioned(key: str) -> Callable[[Any], ChatMessage | None]:
    def decode(reply: Any) -> ChatMessage | None:
        if not reply:
            return None
        item, position = reply
        [message] = messages_removed(key, [(int(position), item)], storage=_STORAGE)
        return message

    return decode


def entry(key: str, count: Any, fields: Any) -> ConversationInfo:
    values = dict(zip(*[iter(text(v) for v in fields)] * 2, strict=True))
    metadata = {name[2:]: text for name, text in values.items() if name.startswith("m:")}
    return ConversationInfo(
        key,
        int(count),
        from_epoch_ms(values.get("c")),
        from_epoch_ms(values.get("u")),
        decode_metadata(metadata),
    )


def info(key: str) -> Callable[[Any], ConversationInfo | None]:
    def decode(reply: Any) -> ConversationInfo | None:
        if not reply:
            return None
        count, fields = reply
        if int(count) < 0:
            raise metadata_too_large(int(fields))
        return entry(key, count, fields)

    return decode


RawEntry = tuple[str, Any, Any]
"""A catalog entry as the script returns it: key, message count, entry fields (undecoded)."""


def catalog_raw(reply: Any) -> tuple[list[RawEntry], str | None]:
    """A catalog page's entries, undecoded but for their keys, and its cursor."""
    cursor, *entries = reply
    found = [(text(member), count, fields) for member, count, fields in entries]
    return found, text(cursor) or None


def keys_page(reply: Any) -> tuple[list[str], str | None]:
    """A registry page's live keys and the cursor to the next (``None``: the last page)."""
    cursor, *keys = (text(v) for v in reply)
    return keys, cursor or None


_UNAVAILABLE = ("LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "OOM", "READONLY")


def reply_error(message: str, op: Op[Any] | None, where: str) -> ChatStoreError:
    """Return the core error for an error reply from Redis (or Upstash) to ``op``.

    Args:
        message: The server's error text (e.g. ``WRONGTYPE Operation against ...``).
        op: The call that failed (its conversation key is named), if any.
        where: The server, password masked.
    """
    words = message.split()
    code = words[0] if words else ""
    if "WRONGTYPE" in message:
        return CorruptDataError(
            f"the value at key {op and op.key!r} on {where} is not a list of chat messages "
            f"({message})"
        )
    if code in {"WRONGPASS", "NOAUTH", "NOPERM"} or "invalid password" in message:
        return AuthenticationError(f"{where} rejected the credentials: {message}")
    if code in {"MOVED", "ASK", "CROSSSLOT"} or "same slot" in message or "non local" in message:
        return ConfigurationError(
            f"{where} is a Redis Cluster: leave cluster unset (the store detects it) or pass "
            f"cluster=True or a RedisCluster client ({message})"
        )
    if code in _UNAVAILABLE:
        return BackendUnavailableError(f"{where} cannot serve requests now: {message}")
    what = "" if op is None else f" running {op.script.name if op.script else op.args[0]}"
    return ChatStoreError(f"{where} failed{what}: {message}")
