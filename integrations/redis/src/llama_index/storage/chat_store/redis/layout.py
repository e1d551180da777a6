r"""The Redis list layout: where a chat store keeps its data, each operation as one script call.

Public, for every store speaking to Redis through some transport: :class:`ListChatStore` is
the whole chat store over this layout, and a subclass says only how one script call travels
(``_execute``/``_aexecute``: redis-py's sockets for ``RedisChatStore``, Upstash's REST API
for ``UpstashChatStore``) and how to scan for existing lists.

* A conversation is one LIST at ``namespace + key`` whose elements are message JSON (core's
  serializer), oldest first. With the default empty namespace this is exactly the layout of
  LlamaIndex's ``RedisChatStore`` / ``UpstashChatStore``, so their data reads as is.
* The registry, two sorted sets at ``namespace + "\0keys"`` (every member, ordered by name)
  and ``namespace + "\0expiry"`` (expiring members by expiry), lists this store's
  conversations (see :mod:`._scripts`). The names hold a NUL byte, which no conversation key
  may contain, so they can never collide with a conversation.
* A conversation's record, a short LIST at ``namespace + key + "\0ops"``, remembers its
  latest changes by operation id so that a change resent after a lost reply is applied
  once (see :mod:`._scripts`); it expires a few minutes after the last change.
* In Redis Cluster a namespace without a hash tag is *bucketed* (see :mod:`._buckets`): each
  key above starts with the home of the conversation's bucket, ``namespace + "{tag}"``
  instead of ``namespace``, and each bucket has a registry of its own.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, TypeVar

from pydantic import AliasChoices, Field

from llama_index.storage.chat_store.core import (
    Capability,
    ChatMessage,
    CorruptDataError,
    InvalidKeyError,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import NOT_BOOL, Change, Plan, PlannedChatStore
from llama_index.storage.chat_store.core.catalog import (
    MAX_METADATA_BYTES,
    ConversationInfo,
    ConversationPage,
)
from llama_index.storage.chat_store.redis import _replies, _scripts
from llama_index.storage.chat_store.redis._buckets import (
    BUCKETS,
    TAGS,
    Batch,
    bucket_of,
    merged_page,
    walk_rounds,
)
from llama_index.storage.chat_store.redis._replies import Op, reply_error
from llama_index.storage.chat_store.redis._scripts import Script

__all__ = [
    "KEYS_PAGE_SIZE",
    "ListChatStore",
    "ListLayout",
    "Op",
    "has_hash_tag",
    "reply_error",
]

T = TypeVar("T")
KEYS_PAGE_SIZE = 100
"""Registry entries read per round trip when listing or clearing."""
_INDEX = "\x00keys"
_EXPIRY = "\x00expiry"
_KEEP_EXPIRY = "-1"
_RECORD = "\x00ops"
_RESEND = "?"
"""Before an op id: the change may have been applied already (see :mod:`._scripts`)."""


def has_hash_tag(namespace: str) -> bool:
    """Return whether every key under ``namespace`` hashes to one Redis Cluster slot."""
    opening = namespace.find("{")
    closing = namespace.find("}", opening + 1)
    return opening >= 0 and closing > opening + 1


@dataclass(frozen=True)
class ListLayout:
    """Key names and script calls for one store configuration.

    Args:
        namespace: Prefix of every key ("" = LlamaIndex's raw keys).
        ttl_ms: Expiry after each change in milliseconds (0: never).
        refresh_on_read: Reads also slide the expiry.
        record_ms: How long a conversation's record of changes outlives its last change:
            longer than a store call may go on retrying.
        client_resends: The client may resend a call by itself (a client passed in, whose
            retry settings are not ours, or a cluster client, which retries across
            failovers): every change then looks for its op id from its first send.
        bucketed: Spread the conversations over :data:`~._buckets.BUCKETS` buckets, each
            with its own registry (Redis Cluster without a hash-tagged namespace).
    """

    namespace: str = ""
    ttl_ms: int = 0
    refresh_on_read: bool = False
    record_ms: int = 300_000
    client_resends: bool = False
    bucketed: bool = False

    @cached_property
    def _ttl_arg(self) -> str:
        return str(self.ttl_ms)

    @cached_property
    def _record_arg(self) -> str:
        return str(self.record_ms)

    @cached_property
    def homes(self) -> tuple[str, ...]:
        """Each bucket's key prefix; unbucketed, the namespace alone (bucket 0)."""
        if not self.bucketed:
            return (self.namespace,)
        return tuple(f"{self.namespace}{{{tag}}}" for tag in TAGS)

    @cached_property
    def _registries(self) -> tuple[tuple[str, str], ...]:
        return tuple((home + _INDEX, home + _EXPIRY) for home in self.homes)

    @cached_property
    def registry(self) -> tuple[str, str]:
        """The registry's keys (bucket 0's when bucketed): the index and the expiry set."""
        return self._registries[0]

    def conversation(self, key: str) -> str:
        """The LIST key holding conversation ``key`` (in its bucket, bucket 0 when unbucketed)."""
        return self.homes[bucket_of(key) if self.bucketed else 0] + key

    def key_of(self, name: str) -> str | None:
        """The conversation held at LIST key ``name``, if this layout would put it there."""
        if not name.startswith(self.namespace):
            return None
        key = name[len(self.namespace) :]
        if not self.bucketed:
            return key
        tag, key = key[1:4], key[5:]
        return key if name == self.conversation(key) and tag in TAGS else None

    def _call(
        self, script: Script, key: str, args: Sequence[str], decode: Callable[[Any], T]
    ) -> Op[T]:
        bucket = bucket_of(key) if self.bucketed else 0
        keys = (self.homes[bucket] + key, *self._registries[bucket])
        return Op(script, keys, (key, *args), decode, key)

    def _change(
        self,
        script: Script,
        key: str,
        args: Sequence[str],
        decode: Callable[[Any], T],
        change: Change,
    ) -> Op[T]:
        """A script call carrying ``change``'s op id (``args[2]``), applied at most once.

        The id goes with a mark when the change may have been applied already (an earlier
        send failed, or the client may resend by itself): then the script looks for it in
        the record first; a first send skips the search, its op id being new.
        """
        bucket = bucket_of(key) if self.bucketed else 0
        conv = self.homes[bucket] + key
        keys = (conv, *self._registries[bucket], conv + _RECORD)
        op_id = _RESEND + change.id if change.check or self.client_resends else change.id
        head = (key, self._ttl_arg, op_id, self._record_arg)
        return Op(script, keys, (*head, *args), decode, key)

    def _read(self) -> str:
        return str(self.ttl_ms) if self.refresh_on_read and self.ttl_ms else _KEEP_EXPIRY

    # -- writes ------------------------------------------------------------------------------

    def append(self, key: str, messages: Sequence[ChatMessage], change: Change) -> Op[None]:
        """Append ``messages`` (at least one)."""
        jsons = [*map(message_to_json, messages)]
        return self._change(_scripts.APPEND, key, jsons, _replies.nothing, change)

    def insert(self, key: str, idx: int, message: ChatMessage, change: Change) -> Op[None]:
        """Insert ``message`` before position ``idx`` (``list.insert`` semantics)."""
        args = [str(idx), message_to_json(message)]
        return self._change(_scripts.INSERT, key, args, _replies.nothing, change)

    def replace(self, key: str, messages: Sequence[ChatMessage], change: Change) -> Op[None]:
        """Replace the conversation (no messages: remove it)."""
        jsons = [*map(message_to_json, messages)]
        return self._change(_scripts.REPLACE, key, jsons, _replies.nothing, change)

    def delete_all(self, key: str, change: Change) -> Op[list[ChatMessage]]:
        """Remove the conversation; the reply is its messages."""
        decode = _replies.messages(key, 0, removed=True)
        return self._change(_scripts.DELETE_ALL, key, [], decode, change)

    def delete_at(self, key: str, idx: int, change: Change) -> Op[ChatMessage | None]:
        """Remove the message at ``idx``; the reply is that message or ``None``."""
        return self._change(_scripts.DELETE_AT, key, [str(idx)], _replies.positioned(key), change)

    def pop_last(self, key: str, change: Change) -> Op[ChatMessage | None]:
        """Remove the last message; the reply is that message or ``None``."""
        return self._change(_scripts.POP_LAST, key, [], _replies.positioned(key), change)

    def pop_first(
        self, key: str, n: int, change: Change, tool_safe: bool = False
    ) -> Op[list[ChatMessage]]:
        """Remove the first ``n`` (> 0) messages; the reply is them, oldest first.

        ``tool_safe``: also the tool results that would lead what is left.
        """
        decode = _replies.messages(key, 0, removed=True)
        args = [str(n), "1" if tool_safe else "0"]
        return self._change(_scripts.POP_FIRST, key, args, decode, change)

    def adopt(self, key: str) -> Op[bool]:
        """Register an existing list at ``key`` keeping its expiry; the reply says if it was one."""
        return self._call(_scripts.ADOPT, key, [_KEEP_EXPIRY], bool)

    # -- reads -------------------------------------------------------------------------------

    def window(self, key: str, offset: int, limit: int | None) -> Op[list[ChatMessage]]:
        """Read ``messages[offset:][:limit]`` without reading the rest.

        A plain LRANGE where the window's ends are known without the length; a script (LLEN
        then LRANGE) otherwise, or when reads refresh the expiry.
        """
        plain = offset >= 0 or limit is None or limit >= -offset
        if self._read() == _KEEP_EXPIRY and limit != 0 and plain:
            stop = -1 if limit is None or offset < 0 else offset + limit - 1
            command = ("LRANGE", self.conversation(key), str(offset), str(stop))
            # From the end the window reaches the last message: positions count from there.
            decode = _replies.messages(key, offset if offset >= 0 else None)
            return Op(None, (), command, decode, key)
        args = [self._read(), str(offset), str(-1 if limit is None else limit)]

        def from_start(reply: Any) -> list[ChatMessage]:
            start, items = reply
            return _replies.messages(key, int(start))(items)

        return self._call(_scripts.WINDOW, key, args, from_start)

    def count(self, key: str) -> Op[int]:
        """Count the messages."""
        if self._read() == _KEEP_EXPIRY:
            return Op(None, (), ("LLEN", self.conversation(key)), int, key)
        return self._call(_scripts.COUNT, key, [self._read()], int)

    def info(self, key: str) -> Op[ConversationInfo | None]:
        """Read the conversation's catalog entry (``None``: no messages)."""
        return self._call(_scripts.INFO, key, [_KEEP_EXPIRY], _replies.info(key))

    def set_metadata(
        self, key: str, changes: dict[str, str | None], change: Change
    ) -> Op[ConversationInfo | None]:
        """Merge ``changes`` (``{name: JSON text or None}``) into the entry's metadata."""
        pairs = [part for name, text in changes.items() for part in (name, text or "")]
        args = [str(MAX_METADATA_BYTES), *pairs]
        return self._change(_scripts.METADATA, key, args, _replies.info(key), change)

    def catalog_page(
        self, prefix: str, after: str | None, limit: int, bucket: int = 0
    ) -> Op[_RawPage]:
        """Read one page of catalog entries: keys starting with ``prefix``, after ``after``.

        The entries are left undecoded (see :func:`_decoded`): merging buckets reads more of
        them than the page holds.
        """
        if after is not None and after.encode() >= prefix.encode():
            low = "(" + after
        else:
            low = "[" + prefix if prefix else "-"
        args = (self.homes[bucket], low, prefix, str(limit))
        return Op(_scripts.CATALOG_PAGE, self._registries[bucket], args, _replies.catalog_raw)

    def keys_page(self, cursor: str | None, bucket: int = 0) -> Op[tuple[list[str], str | None]]:
        """Read one registry page after ``cursor`` (``None``: from the start).

        The reply is its live keys and the cursor to the next (``None``: the last page).
        """
        args = (self.homes[bucket], cursor or "", str(KEYS_PAGE_SIZE))
        return Op(_scripts.KEYS_PAGE, self._registries[bucket], args, _replies.keys_page)

    def clear_page(self, bucket: int = 0) -> Op[int]:
        """Remove one page of conversations; the reply is how many remain registered."""
        args = (self.homes[bucket], str(KEYS_PAGE_SIZE))
        return Op(_scripts.CLEAR_PAGE, self._registries[bucket], args, int)

    # -- every bucket (a bucketed layout) --------------------------------------------------

    def merged_catalog(self, prefix: str, after: str | None, limit: int) -> Plan[_RawPage]:
        """Read one catalog page of every bucket together (see :func:`._buckets.merged_page`)."""

        def ask(bucket: int, cursor: str | None, size: int) -> Op[_RawPage]:
            return self.catalog_page(prefix, cursor, size, bucket)

        return (yield from merged_page(ask, lambda raw: raw[0], after, limit))

    def keys_round(self, cursors: Any) -> Plan[tuple[Sequence[str], Any]]:
        """Read a registry page of every bucket not done; the reply is the keys and cursors."""
        found, following = yield from walk_rounds(lambda b, c: self.keys_page(c, b), cursors)
        return sorted(found), following

    def clear_buckets(self) -> Plan[None]:
        """Remove every conversation, a page of each bucket per round."""
        left = list(range(BUCKETS))
        while left:
            ops = [self.clear_page(bucket) for bucket in left]
            counts = yield Batch(tuple(ops))
            left = [b for b, n in zip(left, counts, strict=True) if int(n)]


_RawPage = tuple[list[_replies.RawEntry], str | None]
"""A catalog page as read: its undecoded entries and its cursor."""


def _decoded(page: _RawPage) -> ConversationPage:
    """Decode the entries of a catalog page."""
    found, cursor = page
    return ConversationPage([_replies.entry(*raw) for raw in found], cursor)


_RECORD_MS = 300_000
"""Least time a conversation's record of changes outlives its last change."""


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


class ListChatStore(PlannedChatStore):
    """A chat store keeping each conversation as one Redis list (the layout above).

    Every operation is one script call: one round trip, atomic on the server, so concurrent
    writers never lose a message and two concurrent removals never return the same one.

    Corrupt data (an element that is not message JSON, or not UTF-8) follows one rule on
    every Redis-family store: reads raise :class:`CorruptDataError` naming the key and
    position and change nothing; a removal removes everything it was asked to (atomically,
    so corrupt data can always be deleted), then raises :class:`CorruptDataError` naming
    the key and the first unreadable position it removed, with the raw data on ``data``.
    ``set_messages(key, [])`` removes a conversation without reading it.

    A call that fails on the way (a dropped connection, a timeout, a server busy loading) is
    retried by the store, up to ``retries`` more times with exponential backoff and jitter
    (from ``retry_backoff`` seconds, doubling) within ``retry_deadline`` seconds. Every
    change carries an operation id, made once per call and checked in the same script that
    applies it, so a retry of a change whose reply was lost applies nothing twice and
    returns what the first attempt returned (a removal returns the messages it removed).
    When the retries run out the call raises :class:`BackendUnavailableError`, whose message
    says whether the change was applied: "nothing was applied" when no attempt reached
    the server, otherwise "the outcome is unknown" (it was applied once or not at all).
    """

    namespace: str = ""
    """Prefix of every key. Empty (the default) reads and writes LlamaIndex's raw keys."""
    ttl: Annotated[int | None, NOT_BOOL] = Field(
        default=None, gt=0, validation_alias=AliasChoices("ttl", "ttl_seconds")
    )
    """Seconds a conversation lives after its last change (``None``: forever)."""
    refresh_on_read: bool = False
    """Reads also push the expiry to now + ttl."""

    @cached_property
    def _layout(self) -> ListLayout:
        ttl_ms = 0 if self.ttl is None else self.ttl * 1000
        # The record of changes must outlive every retry of a call.
        record_ms = max(_RECORD_MS, int(self.retry_deadline * 2000))
        return ListLayout(
            self.namespace,
            ttl_ms,
            self.refresh_on_read,
            record_ms,
            self._client_resends,
            self._bucketed,
        )

    @property
    def capabilities(self) -> frozenset[Capability]:
        """Persistent, shared, expiring, natively async; EXACTLY_ONCE when ``retries`` > 0."""
        found = {
            Capability.PERSISTENT,
            Capability.SHARED,
            Capability.TTL,
            Capability.NATIVE_ASYNC,
            Capability.CATALOG,
        }
        if self.retries > 0:
            found.add(Capability.EXACTLY_ONCE)
        return frozenset(found)

    # -- transport: what a subclass provides ------------------------------------------------

    @abstractmethod
    def _execute(self, step: Op[Any]) -> Any:
        """Run one script call and return the raw reply, raising core errors."""

    @abstractmethod
    async def _aexecute(self, step: Op[Any]) -> Any:
        """Async :meth:`_execute`."""

    @abstractmethod
    def _scan_lists(self, pattern: str) -> Iterator[str]:
        """Yield the names of LIST keys matching the glob ``pattern`` (may repeat a name)."""

    @property
    def _client_resends(self) -> bool:
        """Whether the client may resend a call by itself (see :class:`ListLayout`)."""
        return False

    @property
    def _bucketed(self) -> bool:
        """Whether the namespace is spread over buckets (see :class:`ListLayout`).

        A transport that says yes runs :class:`._buckets.Batch` steps too: their ops at
        once, the reply being their raw replies in order.
        """
        return False

    # -- the plans: one script call each -------------------------------------------------------

    def _get_plan(self, key: str, offset: int, limit: int | None) -> Plan[list[ChatMessage]]:
        return _one(self._layout.window(key, offset, limit))

    def _count_plan(self, key: str) -> Plan[int]:
        return _one(self._layout.count(key))

    def _add_plan(
        self, key: str, messages: list[ChatMessage], idx: int | None, change: Change
    ) -> Plan[None]:
        if idx is None:
            return _one(self._layout.append(key, messages, change))
        return _one(self._layout.insert(key, idx, messages[0], change))

    def _set_plan(self, key: str, messages: list[ChatMessage], change: Change) -> Plan[None]:
        return _one(self._layout.replace(key, messages, change))

    def _delete_all_plan(self, key: str, change: Change) -> Plan[list[ChatMessage] | None]:
        return _one(self._layout.delete_all(key, change))

    def _delete_at_plan(self, key: str, idx: int, change: Change) -> Plan[ChatMessage | None]:
        return _one(self._layout.delete_at(key, idx, change))

    def _pop_plan(self, key: str, change: Change) -> Plan[ChatMessage | None]:
        return _one(self._layout.pop_last(key, change))

    def _oldest_plan(
        self, key: str, n: int, change: Change, tool_safe: bool
    ) -> Plan[list[ChatMessage]]:
        return _one(self._layout.pop_first(key, n, change, tool_safe))

    def _keys_plan(self, cursor: Any) -> Plan[tuple[Sequence[str], Any]]:
        if self._layout.bucketed:
            return (yield from self._layout.keys_round(cursor))
        return (yield from _one(self._layout.keys_page(cursor)))

    def _catalog_plan(self, prefix: str, after: str | None, limit: int) -> Plan[ConversationPage]:
        if self._layout.bucketed:
            return _decoded((yield from self._layout.merged_catalog(prefix, after, limit)))
        return _decoded((yield from _one(self._layout.catalog_page(prefix, after, limit))))

    def _conversation_plan(self, key: str) -> Plan[ConversationInfo | None]:
        return _one(self._layout.info(key))

    def _metadata_plan(
        self, key: str, changes: dict[str, str | None], change: Change
    ) -> Plan[ConversationInfo | None]:
        return _one(self._layout.set_metadata(key, changes, change))

    def _clear_plan(self) -> Plan[None]:
        """Remove the registered conversations a page at a time, then the registry."""
        if self._layout.bucketed:
            return (yield from self._layout.clear_buckets())
        page = self._layout.clear_page()
        while (yield from _one(page)):
            pass

    def adopt(self, match: str = "*") -> list[str]:
        """Register existing conversations (e.g. written by LlamaIndex) so get_keys lists them.

        Scans the database for LIST keys under the namespace matching the glob ``match``,
        checks that their first and last elements are chat messages, and registers each with
        the expiry it already has; the data is not changed. Lists of other data and keys this
        store cannot take (too long) are skipped. Running it again is harmless.

        Returns:
            The keys adopted.
        """
        plain = ListLayout(self.namespace, bucketed=self._layout.bucketed)
        # A bucket's tag is three characters: the glob matches exactly the key after it.
        between = "{???}" if plain.bucketed else ""
        adopted: list[str] = []
        for name in dict.fromkeys(self._scan_lists(_glob_escape(self.namespace) + between + match)):
            key = plain.key_of(name)
            if key is None:
                continue  # a list in a bucket its key does not hash to: not this layout's
            try:
                self._check_key(key)
                self._read(lambda: _one(plain.window(key, 0, 1)))  # noqa: B023 (run at once)
                self._read(lambda: _one(plain.window(key, -1, 1)))  # noqa: B023
            except (InvalidKeyError, CorruptDataError):
                continue
            if self._read(lambda: _one(plain.adopt(key))):  # noqa: B023
                adopted.append(key)
        return adopted


def _one(op: Op[T]) -> Plan[T]:
    """The plan of one script call: send it, decode its reply."""
    return op.decode((yield op))
