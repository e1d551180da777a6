"""UpstashChatStore: the Redis store's layout and scripts over Upstash's REST API."""

from __future__ import annotations

import binascii
import os
from base64 import b64decode
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import upstash_redis
import upstash_redis.asyncio
from pydantic import Field, SecretStr
from upstash_redis.errors import UpstashError

from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    ChatStoreError,
    ConfigurationError,
    NotSentError,
)
from llama_index.storage.chat_store.core.backend import NOT_BOOL, Lazy, PerLoop
from llama_index.storage.chat_store.redis.layout import ListChatStore, Op, reply_error

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["UpstashChatStore"]

_ENCODING_HEADER = "Upstash-Encoding"
# Words in an error reply saying that Upstash (or the database behind it) cannot serve now,
# as opposed to a refused command: worth retrying later, so BackendUnavailableError.
_UNAVAILABLE_WORDS = ("unavailable", "connection refused", "timed out", "timeout", "try again")

# How a request fails: an error reply, the network, or a reply that is not Upstash's (ValueError).
_FAILURES = (UpstashError, httpx.HTTPError, OSError, ValueError)

_URL_ENV = "UPSTASH_REDIS_REST_URL"
_TOKEN_ENV = "UPSTASH_REDIS_REST_TOKEN"  # noqa: S105 (the variable's name, not a token)
# Options of ours a URL's query may carry, as text: the fields' types convert and check them.
_URL_OPTIONS = frozenset(
    {"namespace", "ttl", "ttl_seconds", "retries", "retry_backoff", "retry_deadline",
     "rest_retries", "refresh_on_read"}
)  # fmt: skip


class UpstashChatStore(ListChatStore):
    """Chat histories in Upstash Redis over its REST API, one HTTP request per operation.

    Example:
        >>> store = UpstashChatStore(redis_url="https://eu1-x.upstash.io", redis_token="...",
        ...                          ttl=300)
        >>> store.add_message("user1", ChatMessage(role="user", content="hi"))

    The same layout and Lua scripts as ``RedisChatStore`` (one list per conversation at the
    raw key by default, as LlamaIndex's ``UpstashChatStore`` writes it; a registry for
    ``get_keys``); every operation is one EVALSHA, atomic on the server. Sync calls use
    ``upstash_redis.Redis``, async calls ``upstash_redis.asyncio.Redis`` (one per event loop).
    Errors: ``AuthenticationError`` for a wrong token, ``BackendUnavailableError`` when the
    endpoint cannot be reached, ``CorruptDataError`` for a key holding other data.

    Args:
        redis_url: The REST URL (``UPSTASH_REDIS_REST_URL`` when omitted).
        redis_token: The REST token, kept secret (``UPSTASH_REDIS_REST_TOKEN`` when omitted).
        ttl: Seconds a conversation lives after its last change (alias ``ttl_seconds``).
        namespace: Prefix of every key; "" (default) uses the raw keys, as LlamaIndex does.
        refresh_on_read: Reads also push the expiry forward.
        rest_retries: Times upstash-redis itself retries a failed request (default 0: the
            store's own retries, ``retries`` / ``retry_backoff`` / ``retry_deadline``, do it
            with backoff and a deadline). Harmless either way: every change carries an
            operation id, so a resent change is applied once.
        rest_retry_interval: Seconds between upstash-redis's retries.

    A change whose reply is lost (a dropped connection after Upstash applied it) is
    retried with the same operation id: it is applied once and the call returns what the
    first attempt did. When retries run out, ``BackendUnavailableError`` says whether the
    change was applied (see ``ListChatStore``).
    """

    redis_url: str = ""
    redis_token: SecretStr | None = Field(default=None, exclude=True)
    rest_retries: Annotated[int, NOT_BOOL] = Field(default=0, ge=0)
    rest_retry_interval: Annotated[float, NOT_BOOL] = Field(default=3.0, ge=0)

    @property
    def _client_resends(self) -> bool:
        """upstash-redis resends a request by itself when ``rest_retries`` > 0."""
        return self.rest_retries > 0

    # cached_property, not PrivateAttr: a pydantic private attribute costs about a
    # microsecond on every access, and these are read on every call.
    @cached_property
    def _own_sync(self) -> Lazy[upstash_redis.Redis]:
        return Lazy(lambda: _raw_replies(upstash_redis.Redis(**self._options())))

    @cached_property
    def _own_async(self) -> PerLoop[upstash_redis.asyncio.Redis]:
        return PerLoop(
            lambda: _raw_replies(upstash_redis.asyncio.Redis(**self._options())),
            aclose=lambda client: client.close(),
        )

    def __init__(
        self,
        redis_url: str | None = None,
        redis_token: str | SecretStr | None = None,
        ttl: int | None = None,
        **data: Any,
    ) -> None:
        """Build the store (see the class docstring); never connects.

        Raises:
            ConfigurationError: No URL or no token, from the arguments or the environment.
        """
        data["redis_url"] = redis_url or data.get("redis_url") or os.environ.get(_URL_ENV, "")
        data["redis_token"] = redis_token or data.get("redis_token") or os.environ.get(_TOKEN_ENV)
        if ttl is not None:
            data["ttl"] = ttl
        super().__init__(**data)
        if urlsplit(self.redis_url).scheme not in {"http", "https"}:
            raise ConfigurationError(
                f"redis_url must be the database's REST URL (https://...; or set {_URL_ENV}), "
                f"got {self.redis_url!r}"
            )
        if self.redis_token is None or not self.redis_token.get_secret_value():
            raise ConfigurationError(f"redis_token is required (or set {_TOKEN_ENV})")

    @classmethod
    def class_name(cls) -> str:
        """Return ``UpstashChatStore``."""
        return "UpstashChatStore"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from ``upstash+https://HOST[?token=...&namespace=...&ttl=...]``.

        The token may also be the URL's password (``upstash+https://:TOKEN@HOST``) or come
        from ``UPSTASH_REDIS_REST_TOKEN``. ``upstash+http://`` is for local emulators.
        Keyword ``options`` win over the query.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.partition("+")[2] or "https"
        ours: dict[str, Any] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "token":
                ours["redis_token"] = value
            elif name in _URL_OPTIONS:
                ours[name] = value
            else:
                raise ConfigurationError(f"unknown option {name!r} in an upstash URL")
        if parts.password:
            ours["redis_token"] = unquote(parts.password)
        host = parts.netloc.rpartition("@")[2]
        return cls(redis_url=f"{scheme}://{host}{parts.path}".rstrip("/"), **{**ours, **options})

    # -- clients -----------------------------------------------------------------------------

    def _where(self) -> str:
        return f"Upstash at {self.redis_url}"

    def _options(self) -> dict[str, Any]:
        assert self.redis_token is not None  # checked in __init__
        return {
            "url": self.redis_url,
            "token": self.redis_token.get_secret_value(),
            "rest_retries": self.rest_retries,
            "rest_retry_interval": self.rest_retry_interval,
            "rest_encoding": None,  # replies are decoded by _bytes (see _raw_replies)
            "allow_telemetry": False,
        }

    def _error(self, exc: Exception, op: Op[Any] | None) -> ChatStoreError:
        if isinstance(exc, UpstashError):
            if any(word in str(exc).lower() for word in _UNAVAILABLE_WORDS):
                return BackendUnavailableError(f"{self._where()} cannot serve requests: {exc}")
            return reply_error(str(exc), op, self._where())
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return NotSentError(f"cannot reach {self._where()}: {exc!r}")
        if isinstance(exc, httpx.HTTPError | OSError):
            return BackendUnavailableError(f"cannot reach {self._where()}: {exc!r}")
        # A reply that is not JSON: a proxy or gateway answered instead of Upstash.
        return BackendUnavailableError(f"{self._where()} sent an unexpected reply: {exc}")

    # -- transport ---------------------------------------------------------------------------

    # op.command() is the very request upstash-redis's evalsha (then eval) would build.
    def _execute(self, op: Op[Any]) -> Any:
        client = self._own_sync.get()
        try:
            try:
                return _bytes(client.execute(op.command()))
            except UpstashError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                return _bytes(client.execute(op.command(load=True)))
        except _FAILURES as exc:
            raise self._error(exc, op) from exc

    async def _aexecute(self, op: Op[Any]) -> Any:
        client = self._own_async.get()
        try:
            try:
                return _bytes(await client.execute(op.command()))
            except UpstashError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                return _bytes(await client.execute(op.command(load=True)))
        except _FAILURES as exc:
            raise self._error(exc, op) from exc

    def _scan_lists(self, pattern: str) -> Iterator[str]:
        client, cursor = self._own_sync.get(), None
        while cursor != 0:
            try:
                # Lowercase: upstash-redis reformats the reply of a command it knows by
                # name (SCAN's cursor to an int), which would fail on the raw base64 reply.
                command = ["scan", cursor or 0, "MATCH", pattern, "COUNT", 1000, "TYPE", "list"]
                raw_cursor, raw_names = _bytes(client.execute(command))
                cursor, names = int(raw_cursor), [n.decode("utf-8") for n in raw_names]
            except _FAILURES as exc:
                raise self._error(exc, None) from exc
            yield from names

    def close(self) -> None:
        """Close the sync client's HTTP connections."""
        client = self._own_sync.take()
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Close this event loop's async client and the sync client."""
        client = self._own_async.take()
        if client is not None:
            await client.close()
        self.close()


_Client = TypeVar("_Client", upstash_redis.Redis, upstash_redis.asyncio.Redis)


def _raw_replies(client: _Client) -> _Client:
    """Have Upstash send replies base64-encoded and the client leave them so (see _bytes).

    upstash-redis decodes base64 replies to ``str`` itself, and a list element that is not
    UTF-8 then fails the whole reply with a bare ``UnicodeDecodeError``: the conversation
    could be neither read nor deleted, nor the bad element named. Built with
    ``rest_encoding=None`` the client passes the reply through, and the header (kept on
    ``_headers`` for Upstash's own ratelimit library) still asks Upstash for base64.
    """
    client._headers[_ENCODING_HEADER] = "base64"
    return client


def _bytes(reply: Any) -> Any:
    """Decode a base64-encoded Upstash reply: strings to ``bytes``, as redis-py returns them.

    Raises:
        ValueError: A string in the reply is not base64 (not an Upstash reply).
    """
    if isinstance(reply, list):
        return [_bytes(item) for item in reply]
    if isinstance(reply, str):
        if reply == "OK":  # status replies come unencoded
            return b"OK"
        try:
            return b64decode(reply, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"a reply that is not base64: {reply[:40]!r}") from exc
    return reply
