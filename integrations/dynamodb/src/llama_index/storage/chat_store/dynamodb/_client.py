"""The boto3 client a store uses, DynamoDB's limits, and the mapping of driver errors to ours."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendUnavailableError,
    ChatStoreError,
    ConfigurationError,
    NotSentError,
    PayloadTooLargeError,
)
from llama_index.storage.chat_store.core.retries import RetryPolicy, call_with_retries, new_op_id

__all__ = [
    "MAX_BATCH_GET",
    "MAX_BATCH_WRITE",
    "MAX_ITEM_BYTES",
    "MAX_TRANSACTION_BYTES",
    "MAX_TRANSACTION_ITEMS",
    "RECENT_OPS",
    "ConflictError",
    "Op",
    "Table",
    "Translator",
    "Unreadable",
    "backoff",
    "cancellation_codes",
    "item_size",
    "recent",
    "with_retries",
]

MAX_ITEM_BYTES = 400_000
"""Largest item we write. DynamoDB allows 409,600 bytes (400 KB); we stay below it (and below
moto's 405,000) so a message is refused by us, before any write, not by the server."""
MAX_BATCH_WRITE = 25
"""DynamoDB's limit on requests per BatchWriteItem (moto accepts more; AWS does not)."""
MAX_BATCH_GET = 100
"""DynamoDB's limit on keys per BatchGetItem."""
MAX_TRANSACTION_ITEMS = 100
"""DynamoDB's limit on actions per TransactWriteItems."""
MAX_TRANSACTION_BYTES = 4_000_000
"""DynamoDB's limit on the aggregate size of a transaction (4 MB)."""

RECENT_OPS = 16
"""How many recent changes of a conversation keep their operation ids on it: a change whose
reply was lost is recognized as long as fewer later changes came in between."""

_UNAVAILABLE = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "LimitExceededException",
}
_AUTH = {
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "AccessDeniedException",
    "ExpiredTokenException",
    "MissingAuthenticationTokenException",
    "IncompleteSignatureException",
}

_T = TypeVar("_T")


@dataclass(frozen=True)
class Unreadable:
    """A removed message that held no message (corrupt data): what it held, and why."""

    data: str | bytes | None
    why: str


class ConflictError(Exception):
    """A conditional write lost a race; the operation re-reads and tries again.

    Attributes:
        current: The item the first failed condition of a transaction was checked against,
            when the action asked for it (``ReturnValuesOnConditionCheckFailure``) and the
            item exists: the state that won the race, as strongly consistent as a read.
    """

    def __init__(self, message: str, current: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.current = current


@dataclass
class Op:
    """One change call: its operation id, and what each commit it sent would return.

    The id is made once per call and shared by every attempt (the store's retries and
    botocore's). Each plan a call commits gets its own tag, ``ID.N``, recorded atomically
    with the commit on the conversation (the meta item, or LlamaIndex's single item). A
    retry that finds one of its tags there knows that commit won: the call returns what
    that plan computed (a removal read the messages it removes before committing) and
    finishes the plan's clean-up (deleting items the commit made unreachable), which is
    idempotent. No reply is stored: only this call, in this process, ever resends the id.
    """

    id: str = field(default_factory=new_op_id)
    _results: list[Any] = field(default_factory=list)
    _cleanups: list[list[Callable[[], None]]] = field(default_factory=list)

    def tag(self, result: Any) -> str:
        """Return the tag of a new plan that returns ``result`` once committed."""
        self._results.append(result)
        self._cleanups.append([])
        return f"{self.id}.{len(self._results) - 1}"

    @property
    def latest(self) -> int:
        """The number of the latest tagged plan."""
        return len(self._results) - 1

    def after(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` once the latest tagged plan is known to be committed."""
        self._cleanups[-1].append(cleanup)

    def committed(self, tags: Iterable[str]) -> int | None:
        """Return which plan of this call ``tags`` (a conversation's recent ops) records."""
        prefix = f"{self.id}."
        for tag in tags:
            if tag.startswith(prefix):
                return int(tag[len(prefix) :])
        return None

    def finish(self, plan: int) -> Any:
        """Run the clean-up of the committed plan ``plan`` and return its result."""
        for cleanup in self._cleanups[plan]:
            cleanup()
        return self._results[plan]


def recent(ops: Iterable[str], tag: str) -> list[str]:
    """Return the recent operation ids after ``tag`` (the last :data:`RECENT_OPS` of them)."""
    return [*ops, tag][-RECENT_OPS:]


def item_size(value: dict[str, Any]) -> int:
    """Return an upper bound of the stored size of an item given as typed attribute values."""
    return sum(len(name.encode()) + _value_size(v) for name, v in value.items())


def _value_size(value: dict[str, Any]) -> int:
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(inner.encode("utf-8", "surrogatepass"))
    if kind == "N":
        return len(inner) // 2 + 2
    if kind == "B":
        return len(inner)
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in inner.items())
    return 1


def cancellation_codes(exc: ClientError) -> list[str]:
    """Return the per-action reason codes of a cancelled TransactWriteItems."""
    reasons = exc.response.get("CancellationReasons") or []
    return [str(r.get("Code") or "None") for r in reasons]


def _failed_item(exc: ClientError) -> dict[str, Any] | None:
    """Return the item of the first action whose condition failed, if it was returned."""
    for reason in exc.response.get("CancellationReasons") or []:
        if reason.get("Code") == "ConditionalCheckFailed":
            item = reason.get("Item")
            return item if isinstance(item, dict) else None
    return None


def backoff(attempt: int, cap: float = 0.2) -> None:
    """Sleep a jittered, exponentially growing moment before retrying a lost race."""
    time.sleep(random.uniform(0, min(cap, 0.005 * 2**attempt)))


class Translator:
    """Turns driver errors into core errors naming the table and endpoint.

    Args:
        table: The table name.
        endpoint: The endpoint URL, or a description of the AWS endpoint.
    """

    def __init__(self, table: str, endpoint: str) -> None:
        self.table = table
        self.endpoint = endpoint

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Translate errors raised inside the block; ``what`` names the operation."""
        try:
            yield
        except ClientError as exc:
            raise self.client_error(exc, what) from exc
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            # No connection was made: the request never left.
            raise NotSentError(
                f"DynamoDB at {self.endpoint} is unreachable while trying to {what} "
                f"(table {self.table!r}): {exc}"
            ) from exc
        except (ConnectionClosedError, ReadTimeoutError) as exc:
            raise BackendUnavailableError(
                f"DynamoDB at {self.endpoint} is unreachable while trying to {what} "
                f"(table {self.table!r}): {exc}"
            ) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise AuthenticationError(
                f"no usable AWS credentials for DynamoDB table {self.table!r}: {exc}"
            ) from exc
        except NoRegionError as exc:
            raise ConfigurationError(
                f"no AWS region for DynamoDB table {self.table!r}: pass region_name= or set "
                "AWS_DEFAULT_REGION"
            ) from exc
        except BotoCoreError as exc:
            raise BackendUnavailableError(
                f"DynamoDB at {self.endpoint} failed while trying to {what}: {exc}"
            ) from exc

    def client_error(self, exc: ClientError, what: str) -> ChatStoreError:
        """Return the core error for a DynamoDB error response."""
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", ""))
        where = f"DynamoDB table {self.table!r} at {self.endpoint}"
        if code == "ResourceNotFoundException":
            return ConfigurationError(
                f"{where} does not exist (or is not ACTIVE): create it with "
                "DynamoDBChatStore(...).create_table() or point table_name at an existing table"
            )
        if code in _UNAVAILABLE:
            return BackendUnavailableError(
                f"{where} kept refusing to {what} after retries ({code}: {message}); "
                "raise its capacity or max_retries, then try again"
            )
        if code in _AUTH:
            return AuthenticationError(f"{where} rejected the credentials ({code}: {message})")
        if code == "ValidationException" and "size" in message.lower():
            return PayloadTooLargeError(f"{where} refused an item as too large: {message}")
        if code == "TransactionCanceledException" and any(
            c in {"ThrottlingError", "ProvisionedThroughputExceeded"}
            for c in cancellation_codes(exc)
        ):
            return BackendUnavailableError(f"{where} throttled a transaction to {what}")
        return ChatStoreError(f"{where} failed to {what} ({code}: {message})")


def with_retries(attempt: Callable[[], _T], *, limit: int, what: str, key: str) -> _T:
    """Run ``attempt`` until it does not raise :class:`ConflictError` (lost races back off).

    Raises:
        BackendUnavailableError: Still conflicting after ``limit`` attempts.
    """
    for n in range(limit):
        try:
            return attempt()
        except ConflictError:
            backoff(n)
    raise BackendUnavailableError(
        f"could not {what} for key {key!r}: {limit} attempts lost races with concurrent writers"
    )


@dataclass
class Table:
    """What a layout needs to reach its table: client, names, expiry settings, error mapping.

    Attributes:
        client: Returns the (lazily created, thread-safe) boto3 DynamoDB client.
        name: The table name.
        pk: The partition key attribute.
        ttl: Seconds a conversation lives after its last change, or None.
        ttl_attribute: The attribute DynamoDB's TTL feature reads (epoch seconds).
        errors: Maps driver errors to core errors.
        refresh_on_read: Reads of a live conversation also slide its expiry.
        attempts: How many times an operation that lost a race is retried.
        policy: How a call that failed for want of the server is retried.
    """

    client: Callable[[], Any]
    name: str
    pk: str
    ttl: int | None
    ttl_attribute: str
    errors: Translator
    refresh_on_read: bool = False
    attempts: int = 200
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    def retried(self, attempt: Callable[[], _T], *, mutates: bool) -> _T:
        """Run ``attempt`` again after a transport failure, per :attr:`policy`.

        A change's attempts share one :class:`Op`, so a retry recognizes a commit whose
        reply was lost instead of applying it again.
        """
        return call_with_retries(attempt, self.policy, mutates=mutates)

    def expiry(self, now: float, factor: int = 1) -> int:
        """Return the epoch second ``factor * ttl`` after ``now`` (rounded up)."""
        assert self.ttl is not None
        return math.ceil(now + factor * self.ttl)

    def call(self, what: str, operation: str, **params: Any) -> Any:
        """Call a client operation on this table with errors translated."""
        with self.errors.errors(what):
            return getattr(self.client(), operation)(TableName=self.name, **params)

    def transact(self, what: str, actions: list[dict[str, Any]]) -> None:
        """Run TransactWriteItems; a failed condition or a conflict raises :class:`ConflictError`.

        Raises:
            ConflictError: Another writer changed what the transaction was conditioned on.
        """
        assert 0 < len(actions) <= MAX_TRANSACTION_ITEMS, len(actions)
        for action in actions:
            next(iter(action.values()))["TableName"] = self.name
        with self.errors.errors(what):
            try:
                self.client().transact_write_items(TransactItems=actions)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                    codes = cancellation_codes(exc)
                    if {"ConditionalCheckFailed", "TransactionConflict"} & set(codes):
                        raise ConflictError(str(codes), _failed_item(exc)) from exc
                raise

    def conditional(self, what: str, operation: str, **params: Any) -> Any:
        """Call a conditional single-item write; a failed condition raises ConflictError.

        The error carries the item as it was (:attr:`ConflictError.current`) when the call
        asked for it with ``ReturnValuesOnConditionCheckFailure="ALL_OLD"``.
        """
        with self.errors.errors(what):
            try:
                return getattr(self.client(), operation)(TableName=self.name, **params)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                    item = exc.response.get("Item")
                    raise ConflictError(what, item if isinstance(item, dict) else None) from exc
                raise

    def batch_write(self, what: str, requests: list[dict[str, Any]]) -> None:
        """Run BatchWriteItem in chunks of 25, resending unprocessed requests with backoff."""
        for start in range(0, len(requests), MAX_BATCH_WRITE):
            pending = requests[start : start + MAX_BATCH_WRITE]
            attempt = 0
            while pending:
                with self.errors.errors(what):
                    reply = self.client().batch_write_item(RequestItems={self.name: pending})
                pending = reply.get("UnprocessedItems", {}).get(self.name, [])
                if pending:
                    attempt += 1
                    if attempt > self.attempts:
                        raise BackendUnavailableError(
                            f"DynamoDB table {self.name!r} at {self.errors.endpoint} kept "
                            f"leaving {len(pending)} writes unprocessed while trying to {what}"
                        )
                    backoff(attempt, cap=1.0)

    def batch_get(
        self, what: str, keys: list[dict[str, Any]], **params: Any
    ) -> list[dict[str, Any]]:
        """Read items by key with strongly consistent BatchGetItem (any order; absent: left out).

        ``params`` (``ProjectionExpression``, ``ExpressionAttributeNames``) apply to every
        key. Unprocessed keys are asked for again with backoff.
        """
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), MAX_BATCH_GET):
            request: dict[str, Any] | None = {
                "Keys": keys[start : start + MAX_BATCH_GET],
                "ConsistentRead": True,
                **params,
            }
            attempt = 0
            while request:
                with self.errors.errors(what):
                    reply = self.client().batch_get_item(RequestItems={self.name: request})
                found.extend(reply.get("Responses", {}).get(self.name, []))
                request = reply.get("UnprocessedKeys", {}).get(self.name)
                if request:
                    attempt += 1
                    if attempt > self.attempts:
                        raise BackendUnavailableError(
                            f"DynamoDB table {self.name!r} at {self.errors.endpoint} kept "
                            f"leaving {len(request['Keys'])} reads unprocessed while trying "
                            f"to {what}"
                        )
                    backoff(attempt, cap=1.0)
        return found

    def scan_keys(self, attributes: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of the table's items projected to ``attributes`` (for clear())."""
        names = {f"#a{i}": a for i, a in enumerate(attributes)}
        params: dict[str, Any] = {
            "ProjectionExpression": ", ".join(names),
            "ExpressionAttributeNames": names,
            "ConsistentRead": True,
        }
        while True:
            page = self.call("scan the table", "scan", **params)
            yield page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
