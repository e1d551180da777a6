"""The ``tablestore`` SDK imported quietly, the reads our plans make, our errors for its own.

``import tablestore`` logs two WARNING lines on Python < 3.12 (its C++ codec is built for
3.12 only) and emits ImportWarnings; users of this package should not see that. Only those
records are dropped, only during our import; every other log record and warning passes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import urllib3.exceptions

from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendImportError,
    BackendUnavailableError,
    ChatStoreError,
    ConfigurationError,
    NotSentError,
)

__all__ = [
    "CONDITION_FAILED", "SDK_LOGGER", "Call", "WritesResentOnlyIfRefused", "cells",
    "format_traces_only_when_enabled", "get_range", "get_row", "key_page", "redact_logger",
    "translate", "ts",
]  # fmt: skip


@dataclass(frozen=True)
class Call:
    """One step of a plan: ``client.<method>(*args, **kwargs)``.

    ``OTSClient`` and ``AsyncOTSClient`` share method names and arguments, so one plan runs
    on either.
    """

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


def cells(row: Any) -> dict[str, Any]:
    """A row's attribute columns by name (none for a missing row)."""
    return {c[0]: c[1] for c in (row.attribute_columns or () if row is not None else ())}


def get_row(table: str, key: str, columns: list[str]) -> Call:
    """The GetRow of ``columns`` of ``key``'s row in a table keyed by ``session_id``."""
    return Call(
        "get_row", (table, [("session_id", key)]), {"columns_to_get": columns, "max_version": 1}
    )


def get_range(
    table: str, low: Any, high: Any, columns: list[str], limit: int | None = None
) -> Call:
    """The GetRange of ``columns`` of (at most ``limit``) rows from key ``low`` to ``high``."""
    return Call(
        "get_range", (table, ts.Direction.FORWARD, low, high),
        {"columns_to_get": columns, "limit": limit, "max_version": 1},
    )  # fmt: skip


def key_page(table: str, start: Any, columns: list[str], limit: int) -> Call:
    """The GetRange of a page of a table keyed by ``session_id``, from ``start`` (or the first)."""
    low, high = start or [("session_id", ts.INF_MIN)], [("session_id", ts.INF_MAX)]
    return get_range(table, low, high, columns, limit)


class _DropCodecNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Native" not in record.getMessage()


def _import_quietly() -> Any:
    notice_filter = _DropCodecNotices()
    loggers = [logging.getLogger(f"tablestore.{name}") for name in ("encoder", "decoder")]
    for logger in loggers:
        logger.addFilter(notice_filter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ImportWarning, module=r"tablestore\b.*")
            warnings.filterwarnings("ignore", message=r".*(native|C\+\+).*", category=ImportWarning)
            import tablestore
    except ImportError as exc:  # pragma: no cover (a dependency of this package)
        raise BackendImportError(
            "the tablestore SDK is missing: pip install llama-index-storage-chat-store-tablestore"
        ) from exc
    finally:
        for logger in loggers:
            logger.removeFilter(notice_filter)
    return tablestore


ts: Any = _import_quietly()

SDK_LOGGER = "llama_index.storage.chat_store.tablestore.sdk"
"""The logger our clients give the SDK (its DEBUG traces stay available)."""


class _DropReraisedErrors(logging.Filter):
    # The SDK logs ERROR for every failed request and then raises; we raise our own error for
    # each (conditional-write conflicts are routine), so those records are only noise.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


_SECRET_HEADER = re.compile(
    r"""(?P<name>['"]?(?:x-ots-accesskeyid|x-ots-ststoken|x-ots-signature\w*|authorization)"""
    r"""['"]?\s*:\s*)(?P<quote>['"])(?P<value>.*?)(?P=quote)""",
    re.IGNORECASE,
)


class _RedactCredentials(logging.Filter):
    """Blank the credentials the SDK puts in its DEBUG traces of request and response headers.

    Those traces print the header dicts: the access key id, the STS token, the request
    signature and the response's ``Authorization`` (key id and signature). The rest of the
    trace (API, other headers, body) stays for debugging.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRET_HEADER.sub(r"\g<name>\g<quote>***\g<quote>", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_REDACT = _RedactCredentials()


def redact_logger(name: str) -> None:
    """Make sure the SDK logger ``name`` never emits credentials (idempotent)."""
    logger = logging.getLogger(name)
    if _REDACT not in logger.filters:
        logger.addFilter(_REDACT)


class _EffectiveLevel:
    """A logger as the SDK's protocol sees it, whose ``level`` is its effective level.

    The SDK renders every request's protobuf as text for a DEBUG trace whenever its logger's
    own ``level`` is DEBUG or lower, which the NOTSET (0) of a logger nobody configured
    always is; the record is then dropped by the level inherited from above. For a
    BatchGetRow of ten rows that rendering was about a tenth of the client's time.
    Traces still appear whenever DEBUG is enabled for the logger or an ancestor.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    @property
    def level(self) -> int:
        return self._logger.getEffectiveLevel()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def format_traces_only_when_enabled(client: Any) -> Any:
    """Make a client we built render its DEBUG traces only when DEBUG is enabled; return it."""
    protocol: Any = getattr(client, "protocol", None)
    logger = getattr(protocol, "logger", None)
    if isinstance(logger, logging.Logger):
        protocol.logger = _EffectiveLevel(logger)
    return client


logging.getLogger(SDK_LOGGER).addFilter(_DropReraisedErrors())
redact_logger(SDK_LOGGER)

CONDITION_FAILED = "OTSConditionCheckFail"
_AUTH_CODES = {"OTSAuthFailed", "OTSNoPermissionAccess", "OTSAccessKeyIdNotExist"}
_UNAVAILABLE_CODES = {
    "OTSServerBusy", "OTSServerUnavailable", "OTSInternalServerError", "OTSTimeout",
    "OTSPartitionUnavailable", "OTSTableNotReady", "OTSNotEnoughCapacityUnit",
    "OTSOperationThrottled", "OTSRowOperationConflict",
}  # fmt: skip


class WritesResentOnlyIfRefused(ts.retry.RetryPolicy):  # type: ignore[misc]
    """The SDK retry policy of a store's clients: resend a change only if it was refused.

    ``policy`` (the SDK's default if ``None``) decides, except that a change is resent only
    when the service refused it (throttled, busy, a row operation conflict), never after an
    error that leaves its outcome unknown (a timeout, an internal error): the store retries
    those itself, with the change's op id.
    """

    def __init__(self, policy: Any = None) -> None:
        if isinstance(policy, WritesResentOnlyIfRefused):
            policy = policy.inner
        self.inner: Any = policy if policy is not None else ts.retry.DefaultRetryPolicy()

    def should_retry(self, retry_times: int, exception: Any, api_name: str) -> bool:
        util = ts.retry.RetryUtil
        if util.is_repeatable_api(api_name) or util.should_retry_no_matter_which_api(exception):
            return bool(self.inner.should_retry(retry_times, exception, api_name))
        return False

    def get_retry_delay(self, retry_times: int, exception: Any, api_name: str) -> float:
        return float(self.inner.get_retry_delay(retry_times, exception, api_name))


_NOT_SENT_ERRORS = (
    urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
    aiohttp.ClientConnectorError, ConnectionRefusedError,
)  # fmt: skip


_NETWORK_ERRORS = (
    urllib3.exceptions.HTTPError, aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, OSError,
)  # fmt: skip


def translate(exc: BaseException, where: str, table: str) -> ChatStoreError | None:
    """Return our error for a driver error (``None`` when it is not the driver's).

    Args:
        exc: What the SDK or the transport raised.
        where: The endpoint and instance, named in the message (never a secret).
        table: The table the call was about.
    """
    if isinstance(exc, ts.OTSServiceError):
        code, message = exc.get_error_code(), exc.get_error_message()
        if code in _AUTH_CODES:
            return AuthenticationError(
                f"Tablestore at {where} rejected the credentials ({code}: {message})"
            )
        if code == "OTSObjectNotExist":
            return ConfigurationError(
                f"table {table!r} does not exist on Tablestore {where} ({message}); call "
                "create_table_if_not_exist() once"
            )
        status = exc.get_http_status() or 0
        if code in _UNAVAILABLE_CODES or status >= 500:
            return BackendUnavailableError(
                f"Tablestore at {where} is unavailable ({code}: {message})"
            )
        return ChatStoreError(
            f"Tablestore at {where} failed on table {table!r} ({code}: {message})"
        )
    if isinstance(exc, ts.OTSClientError):
        status = exc.get_http_status() or 0
        if status >= 500:
            return BackendUnavailableError(f"Tablestore at {where} is unavailable ({exc})")
        return ChatStoreError(f"Tablestore client error talking to {where}: {exc}")
    if not isinstance(exc, _NETWORK_ERRORS):
        return None
    failed = f"Tablestore at {where} ({type(exc).__name__}: {str(exc)[:200]})"
    reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError wraps the last failure
    if isinstance(exc, _NOT_SENT_ERRORS) or isinstance(reason, _NOT_SENT_ERRORS):
        return NotSentError(f"cannot connect to {failed}")  # never sent: nothing applied
    return BackendUnavailableError(f"cannot reach {failed}")
