"""Table I/O as plain request objects, run by a sync or an async driver.

Every store operation is written once, as a generator that yields request objects
(:class:`Get`, :class:`Query`, :class:`Batch`, :class:`Put`, :class:`Remove`) and
receives their results. :func:`run_sync` executes the requests with the sync
``azure.data.tables`` client, :func:`run_async` with ``azure.data.tables.aio``: the
logic is shared, only the I/O call differs, and no event loop hides in a sync call.

A failed optimistic-concurrency condition (HTTP 409/412, or 404 on a conditional
write) is thrown into the generator as :class:`ConflictError` so it can re-read and retry;
every other failure becomes one of core's errors with the driver error chained.

A request that fails for want of the service (a dropped connection, a timeout, a 5xx) is
sent again by the driver, through core's ``call_with_retries``; azure-core's own retries
are off for every request (``retry_total=0``, also on clients the caller hands in). A
resent write is safe because every write is idempotent or conditional: when a conditional
write whose earlier attempt had an unknown outcome fails its condition, the
:class:`ConflictError` says so (``unsure``), and the plan asks the data whether its own
operation committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import aiohttp
import urllib3.exceptions

from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
)
from azure.data.tables import EntityProperty, TableClient, UpdateMode
from azure.data.tables.aio import TableClient as AsyncTableClient
from llama_index.storage.chat_store.azure._codec import (
    BATCH_MAX_OPS,
    BATCH_MAX_WIRE_BYTES,
    entity_wire_size,
)
from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendUnavailableError,
    ChatStoreError,
    NotSentError,
    PayloadTooLargeError,
)
from llama_index.storage.chat_store.core.retries import (
    RetryPolicy,
    acall_with_retries,
    call_with_retries,
)

__all__ = [
    "NO_SDK_RETRIES",
    "Action",
    "Batch",
    "ConflictError",
    "Get",
    "Plan",
    "Put",
    "Query",
    "Remove",
    "Row",
    "Sleep",
    "TableClients",
    "backoff",
    "chunks",
    "fits",
    "run_async",
    "run_sync",
]

_T = TypeVar("_T")


class Row(NamedTuple):
    """An entity's properties (Edm wrappers removed) and its ETag."""

    props: dict[str, Any]
    etag: str


@dataclass(frozen=True)
class Get:
    """Point read; result: :class:`Row` or ``None``."""

    table: str
    pk: str
    rk: str


@dataclass(frozen=True)
class Query:
    """One page of a parameterised query; result: ``(rows, continuation or None)``."""

    table: str
    filter: str
    params: Mapping[str, Any]
    select: tuple[str, ...] | None = None
    page_size: int | None = None
    token: Any = None


@dataclass(frozen=True)
class Batch:
    """An entity-group transaction (one partition, at most 100 operations).

    ``actions`` are ``(verb, entity, etag or None)`` with verb ``create``, ``upsert``,
    ``update`` (replace) or ``delete``; an etag makes the operation conditional.
    Result: the ETags in order.
    """

    table: str
    actions: Sequence[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Put:
    """Write one entity (``create``, ``upsert`` or conditional ``update``); result: ETag."""

    table: str
    entity: dict[str, Any]
    verb: str = "upsert"
    etag: str | None = None


@dataclass(frozen=True)
class Sleep:
    """Back off before retrying after a conflict; result: ``None``."""

    seconds: float


@dataclass(frozen=True)
class Remove:
    """Delete one entity (conditional when ``etag`` is given); missing is fine unconditionally."""

    table: str
    pk: str
    rk: str
    etag: str | None = None


Request = Get | Query | Batch | Put | Remove
Op = Request | Sleep
Action = tuple[str, dict[str, Any], str | None]
"""A transaction operation: ``(verb, entity, etag or None)``.

Verbs: ``create``, ``update`` and ``upsert`` (replacing the entity), ``delete``, and
``touch`` (the entity stays as it is, its ETag changes: a condition other writers see).
"""
Plan = Generator[Op, Any, _T]


def backoff(attempt: int) -> Sleep:
    """Return a jittered, growing pause before retrying after a conflict."""
    return Sleep(min(0.5, 0.002 * (2 ** min(attempt, 8))) * random.uniform(0.5, 1.5))


def fits(actions: Sequence[Action]) -> bool:
    """Return whether the actions fit one transaction (100 operations, 4 MiB)."""
    if len(actions) > BATCH_MAX_OPS:
        return False
    return sum(entity_wire_size(e) for _, e, _ in actions) <= BATCH_MAX_WIRE_BYTES


def chunks(actions: Sequence[Action]) -> list[list[Action]]:
    """Cut actions into transactions within the operation and payload limits."""
    out: list[list[Action]] = []
    current: list[Action] = []
    size = 0
    for action in actions:
        wire = entity_wire_size(action[1])
        if current and (len(current) >= BATCH_MAX_OPS or size + wire > BATCH_MAX_WIRE_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(action)
        size += wire
    if current:
        out.append(current)
    return out


class ConflictError(Exception):
    """An optimistic-concurrency condition failed (409, 412, or 404 on a conditional write).

    ``unsure``: an earlier attempt of the same request had an unknown outcome, so the
    condition may have failed on that attempt's own effect. Otherwise the request was
    applied by no attempt.
    """

    def __init__(self, status: int | None, *, unsure: bool = False) -> None:
        super().__init__(f"condition failed ({status})")
        self.status = status
        self.unsure = unsure


class TableMissingError(Exception):
    """The table vanished after we created it (deleted by someone else)."""


def _unwrap(entity: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, EntityProperty) else v for k, v in entity.items()}


def _etag(entity: Any) -> str:
    return str(entity.metadata["etag"])


def _row(entity: Any, query: Query) -> Row:
    props = _unwrap(entity)
    if query.select:
        # A selected property an entity lacks may come back as null (Azurite leaves it
        # out); the service stores no nulls, so None only ever means "not there".
        props = {k: v for k, v in props.items() if v is not None}
    return Row(props, _etag(entity))


def _release(pages: Any) -> Any:
    """Return a page iterator's continuation token and let go of the page it holds.

    azure-core's page iterators keep their own bound methods, a reference cycle, so the
    last page (every entity, decoded, and the parsed reply) would live until Python's
    cyclic collector ran; a 1,000-row read then left about 4,000 objects behind each
    time, which made the slow full collections several times more frequent. The
    iterator is used for one page only, so its state can go now.
    """
    token = pages.continuation_token
    with contextlib.suppress(TypeError):  # an iterator without a __dict__ holds no cycle
        vars(pages).clear()
    return token


# What proves that a request never left: the connection to send it on was never opened.
_CONNECT_FAILURES = (
    aiohttp.ClientConnectorError,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
    ServiceRequestTimeoutError,
)


def _never_sent(exc: BaseException) -> bool:
    """Whether a transport failure happened before the request could be sent.

    azure-core raises ServiceRequestError for a request it could not send, but its aiohttp
    transport also raises it for a connection the server closed after the request went
    out (aiohttp's ServerDisconnectedError): only a connection that never opened counts.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, _CONNECT_FAILURES):
            return True
        linked = (getattr(error, "inner_exception", None), getattr(error, "reason", None),
                  error.__cause__, error.__context__, *error.args)  # fmt: skip
        todo += [e for e in linked if isinstance(e, BaseException)]
    return False


def _translate(exc: Exception, where: str) -> Exception:
    """Map an SDK exception to :class:`ConflictError` or one of core's errors."""
    if isinstance(exc, ServiceRequestError) and _never_sent(exc):
        return NotSentError(f"Azure Table service at {where} is unreachable: {exc}")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return BackendUnavailableError(f"Azure Table service at {where} is unreachable: {exc}")
    if isinstance(exc, ClientAuthenticationError):
        return AuthenticationError(f"Azure Table service at {where} rejected the credentials")
    if not isinstance(exc, HttpResponseError):
        return exc
    status = exc.status_code
    code = str(getattr(exc, "error_code", "") or "")
    if "TableNotFound" in code or "TABLE_NOT_FOUND" in code:
        return TableMissingError(code)
    if status == 403:
        return AuthenticationError(
            f"Azure Table service at {where} rejected the credentials ({code or 403}): check "
            "the account key, SAS token or role assignment"
        )
    if status in (404, 409, 412) or isinstance(exc, (ResourceExistsError, ResourceNotFoundError)):
        return ConflictError(status)
    too_large = ("TooLarge", "TOO_LARGE", "RequestBodyTooLarge")
    if status == 413 or any(word in code for word in too_large):
        return PayloadTooLargeError(f"Azure Table service at {where} refused the size: {code}")
    if status is not None and status >= 500:
        return BackendUnavailableError(
            f"Azure Table service at {where} failed ({status} {code}); retry later"
        )
    return ChatStoreError(f"Azure Table service at {where} answered {status} {code}: {exc}")


def _batch_actions(batch: Batch) -> list[Any]:
    actions: list[Any] = []
    for verb, entity, etag in batch.actions:
        options: dict[str, Any] = _condition(etag)
        if verb in ("upsert", "update"):
            options["mode"] = UpdateMode.REPLACE
        elif verb == "touch":  # a merge of no properties: changes only the ETag
            verb, options["mode"] = "update", UpdateMode.MERGE
        actions.append((verb, entity, options) if options else (verb, entity))
    return actions


def _condition(etag: str | None) -> dict[str, Any]:
    if etag is None:
        return {}
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


def _conditional_delete(op: Remove) -> list[Any]:
    # delete_entity() treats "not found" as success even with an ETag; a one-operation
    # transaction reports it, so two callers never both believe they removed the entity.
    entity = {"PartitionKey": op.pk, "RowKey": op.rk}
    return _batch_actions(Batch(op.table, [("delete", entity, op.etag)]))


# -- sync --------------------------------------------------------------------------------

# On every request: azure-core's RetryPolicy would resend a write with no check of what its
# lost attempt did. The driver retries instead (see the module docstring).
NO_SDK_RETRIES: dict[str, Any] = {"retry_total": 0}
_WRITES = (Batch, Put, Remove)


def _exec_sync(client: TableClient, op: Request) -> Any:
    if isinstance(op, Get):
        try:
            entity = client.get_entity(op.pk, op.rk, **NO_SDK_RETRIES)
        except ResourceNotFoundError as exc:
            if "TableNotFound" in str(getattr(exc, "error_code", "")):
                raise
            return None
        return Row(_unwrap(entity), _etag(entity))
    if isinstance(op, Query):
        pages = client.query_entities(
            op.filter,
            parameters=dict(op.params),
            select=list(op.select) if op.select else None,
            results_per_page=op.page_size,
            **NO_SDK_RETRIES,
        ).by_page(continuation_token=op.token)
        rows = [_row(e, op) for e in next(pages, [])]
        return rows, _release(pages)
    if isinstance(op, Batch):
        results = client.submit_transaction(_batch_actions(op), **NO_SDK_RETRIES)
        return [str(r.get("etag", "")) for r in results]
    if isinstance(op, Put):
        if op.verb == "create":
            result = client.create_entity(op.entity, **NO_SDK_RETRIES)
        elif op.verb == "upsert":
            result = client.upsert_entity(op.entity, mode=UpdateMode.REPLACE, **NO_SDK_RETRIES)
        else:
            result = client.update_entity(
                op.entity, mode=UpdateMode.REPLACE, **_condition(op.etag), **NO_SDK_RETRIES
            )
        return str(result.get("etag", ""))
    assert isinstance(op, Remove)
    if op.etag is None:
        client.delete_entity(op.pk, op.rk, **NO_SDK_RETRIES)
    else:
        client.submit_transaction(_conditional_delete(op), **NO_SDK_RETRIES)
    return None


class _Sending:
    """One request's attempts: translates failures and remembers an unknown outcome."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.unsure = False

    def failure(self, exc: Exception) -> Exception:
        """Return what ``exc`` means (raise it ``from exc``); a retryable one is core's."""
        translated = _translate(exc, self.where)
        if isinstance(translated, BackendUnavailableError):
            self.unsure = self.unsure or not isinstance(translated, NotSentError)
        elif isinstance(translated, ConflictError):
            translated.unsure = self.unsure
        return translated


class _Run:
    """The state of one plan's run shared by the sync and async drivers."""

    def __init__(self, where: str, mutates: bool) -> None:
        self.where = where
        self.mutates = mutates
        self.sent_write = False  # a write of this call may have been applied

    def sending(self) -> _Sending:
        return _Sending(self.where)

    def sent(self, op: Request) -> None:
        """Note that ``op`` may have reached the service (it did not fail unsent)."""
        if isinstance(op, _WRITES):
            self.sent_write = True

    def gave_up(self, exc: BackendUnavailableError) -> BackendUnavailableError:
        """The error of a call whose request ran out of attempts.

        A request never sent says nothing of the writes this call made before it.
        """
        if self.mutates and self.sent_write and isinstance(exc, NotSentError):
            return BackendUnavailableError(
                f"{exc}; but an earlier request of this change reached the service: the "
                "outcome is unknown (the change was applied once or not at all, read the "
                "conversation to know)"
            )
        return exc

    def missing(self, op: Request) -> ChatStoreError:
        return ChatStoreError(f"table {op.table!r} is missing at {self.where}")


def run_sync(
    plan: Plan[_T],
    client_for: Callable[[str], TableClient],
    where: str,
    ensure: Callable[..., None],
    policy: RetryPolicy,
    *,
    mutates: bool,
) -> _T:
    """Run a plan with the sync client; ``ensure`` creates the tables (once per store).

    ``mutates``: the plan changes data (only then does a final error speak of what was
    applied).
    """
    run = _Run(where, mutates)
    call_with_retries(ensure, policy, mutates=False)
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            op = plan.throw(error) if error is not None else plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        error = None
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            result = None
            continue
        for attempt in range(2):
            try:
                result = _send_sync(client_for, op, run, policy)
                break
            except ConflictError as exc:
                error = exc
                break
            except TableMissingError as exc:
                if attempt == 1:
                    raise run.missing(op) from exc
                call_with_retries(lambda: ensure(force=True), policy, mutates=False)
            except BackendUnavailableError as exc:
                raise run.gave_up(exc) from exc


def _send_sync(
    client_for: Callable[[str], TableClient], op: Request, run: _Run, policy: RetryPolicy
) -> Any:
    sending = run.sending()

    def attempt() -> Any:
        try:
            return _exec_sync(client_for(op.table), op)
        except Exception as exc:
            translated = sending.failure(exc)
            if translated is exc:
                raise
            raise translated from exc

    try:
        result = call_with_retries(attempt, policy, mutates=run.mutates)
    except NotSentError:  # no attempt of it left the client
        raise
    except BaseException:
        run.sent(op)
        raise
    run.sent(op)
    return result


# -- async -------------------------------------------------------------------------------


async def _exec_async(client: AsyncTableClient, op: Request) -> Any:
    if isinstance(op, Get):
        try:
            entity = await client.get_entity(op.pk, op.rk, **NO_SDK_RETRIES)
        except ResourceNotFoundError as exc:
            if "TableNotFound" in str(getattr(exc, "error_code", "")):
                raise
            return None
        return Row(_unwrap(entity), _etag(entity))
    if isinstance(op, Query):
        pages = client.query_entities(
            op.filter,
            parameters=dict(op.params),
            select=list(op.select) if op.select else None,
            results_per_page=op.page_size,
            **NO_SDK_RETRIES,
        ).by_page(continuation_token=op.token)
        rows: list[Row] = []
        async for page in pages:
            rows = [_row(e, op) async for e in page]
            break
        return rows, _release(pages)
    if isinstance(op, Batch):
        results = await client.submit_transaction(_batch_actions(op), **NO_SDK_RETRIES)
        return [str(r.get("etag", "")) for r in results]
    if isinstance(op, Put):
        if op.verb == "create":
            result = await client.create_entity(op.entity, **NO_SDK_RETRIES)
        elif op.verb == "upsert":
            result = await client.upsert_entity(
                op.entity, mode=UpdateMode.REPLACE, **NO_SDK_RETRIES
            )
        else:
            result = await client.update_entity(
                op.entity, mode=UpdateMode.REPLACE, **_condition(op.etag), **NO_SDK_RETRIES
            )
        return str(result.get("etag", ""))
    assert isinstance(op, Remove)
    if op.etag is None:
        await client.delete_entity(op.pk, op.rk, **NO_SDK_RETRIES)
    else:
        await client.submit_transaction(_conditional_delete(op), **NO_SDK_RETRIES)
    return None


async def run_async(
    plan: Plan[_T],
    client_for: Callable[[str], AsyncTableClient],
    where: str,
    ensure: Callable[..., Awaitable[None]],
    policy: RetryPolicy,
    *,
    mutates: bool,
) -> _T:
    """Run a plan with the async client of the running event loop (see :func:`run_sync`)."""
    run = _Run(where, mutates)
    await acall_with_retries(ensure, policy, mutates=False)
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            op = plan.throw(error) if error is not None else plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        error = None
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            result = None
            continue
        for attempt in range(2):
            try:
                result = await _send_async(client_for, op, run, policy)
                break
            except ConflictError as exc:
                error = exc
                break
            except TableMissingError as exc:
                if attempt == 1:
                    raise run.missing(op) from exc
                await acall_with_retries(lambda: ensure(force=True), policy, mutates=False)
            except BackendUnavailableError as exc:
                raise run.gave_up(exc) from exc


async def _send_async(
    client_for: Callable[[str], AsyncTableClient], op: Request, run: _Run, policy: RetryPolicy
) -> Any:
    sending = run.sending()

    async def attempt() -> Any:
        try:
            return await _exec_async(client_for(op.table), op)
        except Exception as exc:
            translated = sending.failure(exc)
            if translated is exc:
                raise
            raise translated from exc

    try:
        result = await acall_with_retries(attempt, policy, mutates=run.mutates)
    except NotSentError:  # no attempt of it left the client
        raise
    except BaseException:
        run.sent(op)
        raise
    run.sent(op)
    return result


# -- async clients, one set per event loop -------------------------------------------------


class TableClients:
    """One event loop's async table clients, one per table, made on first use.

    aiohttp sessions belong to the loop that opened them, so a store keeps one set per
    loop in a core ``PerLoop``, which also closes the set inside its loop at shutdown.
    """

    def __init__(self) -> None:
        self._clients: dict[str, AsyncTableClient] = {}

    def client(self, table: str, factory: Callable[[str], AsyncTableClient]) -> AsyncTableClient:
        """Return the client of ``table``, made by ``factory(table)`` the first time."""
        found = self._clients.get(table)
        if found is None:
            found = self._clients[table] = factory(table)
        return found

    async def close(self) -> None:
        """Close every client (in the loop they belong to)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
