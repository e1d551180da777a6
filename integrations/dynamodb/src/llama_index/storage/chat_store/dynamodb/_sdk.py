"""A plan's step (one boto3 client call), DynamoDB's limits, and driver errors as ours."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
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
    CorruptDataError,
    NotSentError,
    PayloadTooLargeError,
)
from llama_index.storage.chat_store.core.backend import Change, ConflictError, Plan
from llama_index.storage.chat_store.core.meta import Race, backoff
from llama_index.storage.chat_store.dynamodb._expr import Expr

__all__ = [
    "MAX_BATCH_GET", "MAX_BATCH_WRITE", "MAX_ITEM_BYTES", "MAX_TRANSACTION_BYTES",
    "MAX_TRANSACTION_ITEMS", "RECENT_OPS", "Call", "LostRaceError", "Op", "Table", "Translator",
    "cancellation_codes", "item_size", "unreadable",
]  # fmt: skip

T = TypeVar("T")

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


@dataclass(frozen=True)
class Call:
    """One step of a plan: ``client.<operation>(**params)`` on the boto3 DynamoDB client.

    ``what`` names the operation in error messages ("append messages").
    """

    operation: str
    params: dict[str, Any]
    what: str


def unreadable(
    table: str, key: str, position: int, data: str | bytes | None, why: str
) -> CorruptDataError:
    """Return the error for a removed message that held no message: what it held, and why."""
    return CorruptDataError(
        f"message at key {key!r} position {position} in DynamoDB table {table!r} is "
        f"unreadable: {why}",
        key=key,
        position=position,
        data=data,
    )


class LostRaceError(ConflictError):
    """A conditional write lost a race; the plan re-reads and tries again.

    Attributes:
        current: The item the (first failed) condition was checked against, when the
            request asked for it (``ReturnValuesOnConditionCheckFailure``) and the item
            exists: the state that won the race, as strongly consistent as a read.
    """

    def __init__(self, message: str, current: Any = None) -> None:
        super().__init__(message)
        self.current: dict[str, Any] | None = current if isinstance(current, dict) else None


class Op:
    """One change call, kept in its :attr:`Change.state`: its tags, and what they return.

    Each plan a call commits gets its own tag, ``ID.N`` (``ID`` the change's id), recorded
    atomically with the commit on the conversation (the meta item, or LlamaIndex's item).
    An attempt that finds one of its tags there knows that commit won: the call returns
    what that plan computed (a removal read what it removes before committing) and
    finishes the plan's idempotent clean-up. No reply is stored: only this call, in this
    process, resends the id. Tags are looked for on every read, ``Change.check`` or not:
    botocore resends a write whose reply it lost without the store knowing.
    """

    def __init__(self, op_id: str) -> None:
        self.id = op_id
        self.adding: Any = None
        """What the call adds, prepared once for every attempt (the layout's own)."""
        self._results: list[Any] = []
        self._cleanups: list[list[Callable[[], Plan[None]]]] = []
        self._undo: list[Callable[[], Plan[None]]] = []

    @classmethod
    def of(cls, change: Change) -> Op:
        """Return the call's :class:`Op`, made on its first attempt."""
        if not isinstance(change.state, Op):
            change.state = cls(change.id)
        return change.state

    def tag(self, result: Any) -> str:
        """Return the tag of a new plan that returns ``result`` once committed."""
        self._results.append(result)
        self._cleanups.append([])
        return f"{self.id}.{len(self._results) - 1}"

    def after(self, cleanup: Callable[[], Plan[None]]) -> None:
        """Run the plan ``cleanup()`` once the latest tagged plan is known to be committed."""
        self._cleanups[-1].append(cleanup)

    def committed(self, tags: Iterable[str]) -> int | None:
        """Return which plan of this call ``tags`` (a conversation's recent ops) records."""
        prefix = f"{self.id}."
        for tag in tags:
            if tag.startswith(prefix):
                return int(tag[len(prefix) :])
        return None

    def undoing(self, plans: list[Plan[None]], undo: Callable[[], Plan[None]]) -> Plan[None]:
        """Run ``plans`` in turn; when one fails, run the plan ``undo()`` and fail.

        ``undo`` runs at once when a plan failed in itself (a lost race, an error of its
        own); when the transport failed (the plan is closed, it can send nothing more), it
        runs first thing in the call's next attempt (see :meth:`settle`).
        """
        try:
            for plan in plans:
                yield from plan
        except Exception:
            yield from undo()
            raise
        except GeneratorExit:
            self._undo.append(undo)
            raise

    def settle(self) -> Plan[None]:
        """Run the clean-ups an earlier attempt of this call left for the next one."""
        while self._undo:
            yield from self._undo[-1]()
            self._undo.pop()

    def finish(self, plan: int = -1) -> Plan[Any]:
        """Run the clean-up of the committed plan ``plan`` (the latest) and return its result."""
        for cleanup in self._cleanups[plan]:
            yield from cleanup()
        return self._results[plan]


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
        except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError,
                ReadTimeoutError) as exc:  # fmt: skip
            # Without a connection the request never left: nothing can have been applied.
            sent = not isinstance(exc, EndpointConnectionError | ConnectTimeoutError)
            raise (BackendUnavailableError if sent else NotSentError)(
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

    def send(self, client: Callable[[], Any], step: Call) -> Any:
        """Make the call ``step`` on ``client()``; raise :class:`LostRaceError` or a core error.

        A failed condition (of a single-item write, or of a transaction, also when it
        conflicted with another transaction) is a :class:`LostRaceError` carrying the item the
        condition was checked against, when the request asked for it.
        """
        with self.errors(step.what):
            try:
                return getattr(client(), step.operation)(**step.params)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "ConditionalCheckFailedException":
                    raise LostRaceError(step.what, exc.response.get("Item")) from exc
                if code == "TransactionCanceledException":
                    codes = cancellation_codes(exc)
                    if {"ConditionalCheckFailed", "TransactionConflict"} & set(codes):
                        # The item of the first action whose condition failed, if returned.
                        reasons = exc.response.get("CancellationReasons") or []
                        failed = [r for r in reasons if r.get("Code") == "ConditionalCheckFailed"]
                        item = failed[0].get("Item") if failed else None
                        raise LostRaceError(str(codes), item) from exc
                raise

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


@dataclass(frozen=True)
class Table:
    """What a layout needs to reach its table: names, expiry settings, and its requests.

    Attributes:
        name: The table name.
        pk: The partition key attribute.
        ttl: Seconds a conversation lives after its last change, or None.
        ttl_attribute: The attribute DynamoDB's TTL feature reads (epoch seconds).
        endpoint: The endpoint URL, or a description of the AWS endpoint (for errors).
        refresh_on_read: Reads of a live conversation also slide its expiry.
        attempts: How many times an operation that lost a race is tried (:meth:`race`).
    """

    name: str
    pk: str
    ttl: int | None
    ttl_attribute: str
    endpoint: str
    refresh_on_read: bool = False
    attempts: int = 200

    def expiry(self, now: float, factor: int = 1) -> int:
        """Return the epoch second ``factor * ttl`` after ``now`` (rounded up)."""
        assert self.ttl is not None
        return math.ceil(now + factor * self.ttl)

    def race(self, key: str, attempt: Callable[[], Plan[T]]) -> Plan[T]:
        """Run the plan ``attempt()`` of a change or read of ``key`` until it wins the race.

        Core's :class:`Race`, paused from 5 ms doubling up to 200 ms: DynamoDB's requests
        take milliseconds, and racing writers must spread out beyond that.

        Raises:
            ChatStoreError: Every one of :attr:`attempts` lost (core's contention error).
        """
        race = Race(self.attempts, first=0.005, cap=0.2)
        return race.run(key, f"DynamoDB table {self.name!r}", attempt)

    def call(self, what: str, operation: str, **params: Any) -> Call:
        """Return the step that calls a client operation on this table.

        A conditional write whose condition fails raises :class:`LostRaceError` in the plan.
        """
        return Call(operation, {"TableName": self.name, **params}, what)

    def update(
        self, what: str, key: dict[str, Any], e: Expr, update: str, condition: str, **params: Any
    ) -> Call:
        """Return the UpdateItem step of ``update`` on ``key`` if ``condition`` holds.

        ``e`` holds the expressions' placeholders. A failed condition raises
        :class:`LostRaceError` in the plan.
        """
        return self.call(
            what, "update_item", Key=key, UpdateExpression=update, ConditionExpression=condition,
            **params, **e.params(),
        )  # fmt: skip

    def update_if(
        self, what: str, key: dict[str, Any], e: Expr, update: str, condition: str
    ) -> Plan[bool]:
        """Run :meth:`update`, where a failed condition is no error: return whether it held."""
        try:
            yield self.update(what, key, e, update, condition)
        except ConflictError:
            return False
        return True

    def transact(self, what: str, actions: list[dict[str, Any]]) -> Call:
        """Return the TransactWriteItems step (a failed condition: :class:`LostRaceError`)."""
        assert 0 < len(actions) <= MAX_TRANSACTION_ITEMS, len(actions)
        for action in actions:
            next(iter(action.values()))["TableName"] = self.name
        return Call("transact_write_items", {"TransactItems": actions}, what)

    def batch_write(self, what: str, requests: list[dict[str, Any]]) -> Plan[None]:
        """Run BatchWriteItem in chunks of 25, resending unprocessed requests with backoff."""
        for start in range(0, len(requests), MAX_BATCH_WRITE):
            chunk = requests[start : start + MAX_BATCH_WRITE]
            yield from self._processed(what, "batch_write_item", "UnprocessedItems", chunk)

    def batch_get(
        self, what: str, keys: list[dict[str, Any]], **params: Any
    ) -> Plan[list[dict[str, Any]]]:
        """Read items by key with strongly consistent BatchGetItem (any order; absent: left out).

        ``params`` (``ProjectionExpression``, ``ExpressionAttributeNames``) apply to every
        key. Unprocessed keys are asked for again with backoff.
        """
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), MAX_BATCH_GET):
            chunk = {"Keys": keys[start : start + MAX_BATCH_GET], "ConsistentRead": True, **params}
            replies = yield from self._processed(what, "batch_get_item", "UnprocessedKeys", chunk)
            for reply in replies:
                found.extend(reply.get("Responses", {}).get(self.name, []))
        return found

    def _processed(
        self, what: str, operation: str, unprocessed: str, request: Any
    ) -> Plan[list[dict[str, Any]]]:
        """Send a batch request, then what DynamoDB left ``unprocessed``, with backoff.

        Returns every reply. Raises :class:`BackendUnavailableError` when some of it is still
        left after :attr:`attempts` resends.
        """
        replies = []
        for attempt in range(1, self.attempts + 2):
            reply = yield Call(operation, {"RequestItems": {self.name: request}}, what)
            replies.append(reply)
            request = reply.get(unprocessed, {}).get(self.name)
            if not request:
                return replies
            if attempt <= self.attempts:
                yield backoff(attempt, 0.005, 1.0)
        left = len(request["Keys"] if isinstance(request, dict) else request)
        raise BackendUnavailableError(
            f"DynamoDB table {self.name!r} at {self.endpoint} kept leaving {left} "
            f"{'reads' if isinstance(request, dict) else 'writes'} unprocessed while trying to "
            f"{what}"
        )

    def live_keys(self, items: list[dict[str, Any]], attribute: str) -> list[str]:
        """Return the key in ``attribute`` of each item whose expiry has not passed."""
        now = time.time()
        keys = []
        for item in items:
            expires = item.get(self.ttl_attribute, {}).get("N")
            if expires is None or int(Decimal(expires)) > now:
                keys.append(item[attribute]["S"])
        return keys

    def scan_page(
        self, what: str, start: dict[str, Any] | None, **params: Any
    ) -> Plan[tuple[list[dict[str, Any]], dict[str, Any] | None]]:
        """Read one page of a Scan from ``start``; return its items and the next start."""
        if start is not None:
            params["ExclusiveStartKey"] = start
        page = yield self.call(what, "scan", **params)
        return page.get("Items", []), page.get("LastEvaluatedKey")

    def clear(self, attributes: list[str]) -> Plan[None]:
        """Delete every item of the table: a scan projected to its key, batched deletes."""
        names = {f"#a{i}": a for i, a in enumerate(attributes)}
        start: dict[str, Any] | None = None
        while True:
            items, start = yield from self.scan_page(
                "scan the table", start, ProjectionExpression=", ".join(names),
                ExpressionAttributeNames=names, ConsistentRead=True,
            )  # fmt: skip
            requests = [{"DeleteRequest": {"Key": k}} for k in items]
            yield from self.batch_write("clear the table", requests)
            if start is None:
                return
