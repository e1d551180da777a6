"""The Azure Tables driver: the steps plans yield, the calls that run them, error translation.

Every store operation is a plan (core's backend kit) yielding request objects
(:class:`Get`, :class:`Query`, :class:`Batch`, :class:`Put`, :class:`Remove`) and
receiving their results. :func:`send_sync` runs one with the sync ``azure.data.tables``
client, :func:`send_async` with ``azure.data.tables.aio``: the logic is shared, only the
I/O call differs, and no event loop hides in a sync call.

A failed optimistic-concurrency condition (HTTP 409/412, or 404 on a conditional write)
becomes the kit's :class:`ConflictError`, thrown into the plan so it can re-read and
retry; every other failure becomes one of core's errors with the driver error chained.

A request that fails for want of the service (a dropped connection, a timeout, a 5xx) is
sent again by the kit, step by step (the store sets ``_resend_steps``); azure-core's own
retries are off for every request (``retry_total=0``, also on clients the caller hands
in). A resent write is safe because every write is idempotent or conditional: when a
conditional write resent after an unknown outcome fails its condition, the kit sets the
change's ``check``, and the plan asks the data whether its own operation committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp
import urllib3.exceptions

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
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
    Action,
    account_from_endpoint,
    chunks,
    parse_connection_string,
)
from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendImportError,
    BackendUnavailableError,
    ChatStoreError,
    NotSentError,
    PayloadTooLargeError,
)
from llama_index.storage.chat_store.core.backend import ConflictError, PerLoop, Plan

if TYPE_CHECKING:
    from llama_index.storage.chat_store.azure.store import AzureChatStore

__all__ = [
    "IN_RANGE",
    "PAGE",
    "Batch",
    "Clients",
    "Get",
    "Put",
    "Query",
    "Remove",
    "Request",
    "Row",
    "delete_rows",
    "query_all",
    "write_all",
]


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
    Result: the ETags in order. ``resend=False``: never sent twice (core's
    ``PlannedChatStore._resendable``).
    """

    table: str
    actions: Sequence[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    resend: bool = True


@dataclass(frozen=True)
class Put:
    """Write one entity (``create``, ``upsert`` or conditional ``update``); result: ETag."""

    table: str
    entity: dict[str, Any]
    verb: str = "upsert"
    etag: str | None = None


@dataclass(frozen=True)
class Remove:
    """Delete one entity (conditional when ``etag`` is given); missing is fine unconditionally."""

    table: str
    pk: str
    rk: str
    etag: str | None = None


Request = Get | Query | Batch | Put | Remove


PAGE = 1000
"""The rows a query asks for per page."""
IN_RANGE = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
"""A query's filter: the RowKeys from ``lo`` up to ``hi`` (excluded) of partition ``pk``."""


def query_all(query: Query) -> Plan[list[Row]]:
    """Read every row ``query`` matches, a page per request."""
    rows: list[Row] = []
    while True:
        page, token = yield query
        rows.extend(page)
        if token is None:
            return rows
        query = replace(query, token=token)


def write_all(table: str, actions: Sequence[Action]) -> Plan[None]:
    """Run deletes and unconditional writes: a transaction per partition and chunk.

    Where a transaction fails, action by action: deleting a missing entity unconditionally
    is fine, a conditional delete that fails alone is skipped, a write becomes an upsert.
    """
    by_partition: dict[str, list[Action]] = {}
    for action in actions:
        by_partition.setdefault(action[1]["PartitionKey"], []).append(action)
    for chunk in (c for group in by_partition.values() for c in chunks(group)):
        try:
            yield Batch(table, chunk)
        except ConflictError:
            for verb, entity, etag in chunk:
                with contextlib.suppress(ConflictError):
                    if verb == "delete":
                        yield Remove(table, entity["PartitionKey"], entity["RowKey"], etag)
                    else:
                        yield Put(table, entity)


def delete_rows(table: str, rows: Sequence[Row]) -> Plan[None]:
    """Delete entities read with their keys (:func:`write_all`)."""
    keys = [{"PartitionKey": r.props["PartitionKey"], "RowKey": r.props["RowKey"]} for r in rows]
    return write_all(table, [("delete", key, None) for key in keys])


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


def translate(exc: Exception, where: str) -> Exception:
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
        return ConflictError(f"condition failed ({status})")
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


# On every request: azure-core's RetryPolicy would resend a write with no check of what its
# lost attempt did. The kit resends instead (see the module docstring).
NO_SDK_RETRIES: dict[str, Any] = {"retry_total": 0}


def _call(op: Request) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The client method, arguments and options sending ``op`` (the same on both clients)."""
    if isinstance(op, Get):
        return "get_entity", (op.pk, op.rk), NO_SDK_RETRIES
    if isinstance(op, Query):
        select = list(op.select) if op.select else None
        options = {"parameters": dict(op.params), "select": select,
                   "results_per_page": op.page_size, **NO_SDK_RETRIES}  # fmt: skip
        return "query_entities", (op.filter,), options
    if isinstance(op, Batch):
        return "submit_transaction", (_batch_actions(op),), NO_SDK_RETRIES
    if isinstance(op, Put):
        if op.verb == "create":
            return "create_entity", (op.entity,), NO_SDK_RETRIES
        whole = {"mode": UpdateMode.REPLACE, **NO_SDK_RETRIES}
        if op.verb == "upsert":
            return "upsert_entity", (op.entity,), whole
        return "update_entity", (op.entity,), {**whole, **_condition(op.etag)}
    if op.etag is None:
        return "delete_entity", (op.pk, op.rk), NO_SDK_RETRIES
    # delete_entity() treats "not found" as success even with an ETag; a one-operation
    # transaction reports it, so two callers never both believe they removed the entity.
    batch = Batch(op.table, [("delete", {"PartitionKey": op.pk, "RowKey": op.rk}, op.etag)])
    return "submit_transaction", (_batch_actions(batch),), NO_SDK_RETRIES


def _reply(op: Request, reply: Any) -> Any:
    """The result of ``op`` (see the request types) from the client's reply."""
    if isinstance(op, Get):
        return Row(_unwrap(reply), _etag(reply))
    if isinstance(op, Batch):
        return [str(r.get("etag", "")) for r in reply]
    if isinstance(op, Put):
        return str(reply.get("etag", ""))
    return None


def _absent(op: Request, exc: ResourceNotFoundError) -> bool:
    """Whether a point read found no entity (rather than no table)."""
    return isinstance(op, Get) and "TableNotFound" not in str(getattr(exc, "error_code", ""))


def send_sync(client: TableClient, op: Request) -> Any:
    """Run one request with a sync client (SDK errors untranslated)."""
    method, args, options = _call(op)
    try:
        reply = getattr(client, method)(*args, **options)
    except ResourceNotFoundError as exc:
        if _absent(op, exc):
            return None
        raise
    if isinstance(op, Query):
        pages = reply.by_page(continuation_token=op.token)
        return [_row(e, op) for e in next(pages, [])], _release(pages)
    return _reply(op, reply)


async def send_async(client: AsyncTableClient, op: Request) -> Any:
    """Async :func:`send_sync`."""
    method, args, options = _call(op)
    if isinstance(op, Query):
        pages = client.query_entities(*args, **options).by_page(continuation_token=op.token)
        rows: list[Row] = []
        async for page in pages:
            rows = [_row(e, op) async for e in page]
            break
        return rows, _release(pages)
    try:
        reply = await getattr(client, method)(*args, **options)
    except ResourceNotFoundError as exc:
        if _absent(op, exc):
            return None
        raise
    return _reply(op, reply)


async def _close_all(clients: dict[str, AsyncTableClient]) -> None:
    for client in list(clients.values()):
        await client.close()
    clients.clear()


class Clients:
    """A store's way to the service: its table clients and tables, made on first use.

    Sync clients (one per table) are shared by threads; aio clients belong to the event
    loop that made them (aiohttp sessions do): a set per loop, in a core ``PerLoop`` that
    closes them inside their loop at shutdown. The tables are created
    by the first request, and again when one was deleted since (then the request is sent
    once more).
    """

    def __init__(self, store: AzureChatStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._sync: dict[str, TableClient] = {}
        self._per_loop: PerLoop[dict[str, AsyncTableClient]] = PerLoop(dict, aclose=_close_all)

    @property
    def where(self) -> str:
        """The service endpoint, for error messages (never a secret)."""
        store = self.store
        if store.endpoint:
            return store.endpoint
        if store.connection_string is not None:
            fields = parse_connection_string(store.connection_string.get_secret_value())
            if "TableEndpoint" in fields:
                return fields["TableEndpoint"]
            return f"https://{fields.get('AccountName', '?')}.table.core.windows.net"
        return self._default_endpoint()

    def _default_endpoint(self) -> str:
        service = "cosmos.azure.com" if self.store.service_mode == "cosmos" else "core.windows.net"
        return f"https://{self.store.account_name}.table.{service}"

    def _options(self) -> dict[str, Any]:
        # The store retries (with an operation id check); the SDK must not resend on its own.
        timeout = self.store.timeout
        return {**NO_SDK_RETRIES, "connection_timeout": timeout, "read_timeout": timeout}

    def _credential(self, *, asynchronous: bool) -> Any:
        store = self.store
        if store.account_key is not None:
            name = store.account_name or account_from_endpoint(store.endpoint or "")
            return AzureNamedKeyCredential(name, store.account_key.get_secret_value())
        if store.sas_token is not None:
            return AzureSasCredential(store.sas_token.get_secret_value())
        given = store.async_credential if asynchronous else store.credential
        if given is not None:
            return given
        try:
            if asynchronous:
                from azure.identity.aio import DefaultAzureCredential as AsyncDefault

                return AsyncDefault()
            from azure.identity import DefaultAzureCredential

            return DefaultAzureCredential()
        except ImportError as exc:
            raise BackendImportError(
                "Entra ID authentication needs azure-identity: pip install "
                "'llama-index-storage-chat-store-azure[identity]', or pass an account key, "
                "SAS token or connection string"
            ) from exc

    def _new_sync(self, table: str) -> TableClient:
        store = self.store
        if store.table_service_client is not None:
            return store.table_service_client.get_table_client(table)
        if store.connection_string is not None:
            return TableClient.from_connection_string(
                store.connection_string.get_secret_value(), table_name=table, **self._options()
            )
        endpoint = store.endpoint or self._default_endpoint()
        credential = self._credential(asynchronous=False)
        return TableClient(endpoint, table, credential=credential, **self._options())

    def _new_async(self, table: str) -> AsyncTableClient:
        store, options = self.store, self._options()
        service = store.atable_service_client
        if service is not None:
            # Not service.get_table_client: that shares the service client's HTTP session,
            # which belongs to the event loop it first ran on.
            return AsyncTableClient(service.url, table, credential=service.credential, **options)
        if store.connection_string is not None:
            return AsyncTableClient.from_connection_string(
                store.connection_string.get_secret_value(), table_name=table, **options
            )
        endpoint = store.endpoint or self._default_endpoint()
        credential = self._credential(asynchronous=True)
        return AsyncTableClient(endpoint, table, credential=credential, **options)

    def sync_client(self, table: str) -> TableClient:
        """The sync client of ``table`` (made on first use, shared by threads)."""
        client = self._sync.get(table)
        if client is None:
            with self._lock:
                client = self._sync.get(table)
                if client is None:
                    client = self._sync[table] = self._new_sync(table)
        return client

    def _async_client(self, table: str) -> AsyncTableClient:
        clients = self._per_loop.get()
        client = clients.get(table)
        if client is None:
            client = clients[table] = self._new_async(table)
        return client

    def _tables(self) -> tuple[str, ...]:
        store = self.store
        if store.layout == "llama_index":
            return (store.chat_table_name, store.metadata_table_name)
        return (store.chat_table_name,)

    def _ensure(self) -> None:
        for table in self._tables():
            try:
                with contextlib.suppress(ResourceExistsError):
                    self.sync_client(table).create_table(**NO_SDK_RETRIES)
            except Exception as exc:
                raise translate(exc, self.where) from exc
        self.store._tables_ready = True

    async def _aensure(self) -> None:
        for table in self._tables():
            try:
                with contextlib.suppress(ResourceExistsError):
                    await self._async_client(table).create_table(**NO_SDK_RETRIES)
            except Exception as exc:
                raise translate(exc, self.where) from exc
        self.store._tables_ready = True

    def _raise(self, exc: Exception, step: Request, again: bool) -> None:
        """Raise what ``step`` failing with ``exc`` means; return to create the tables again."""
        failure = translate(exc, self.where)
        if isinstance(failure, TableMissingError):
            if not again:  # deleted by someone else since we made it
                return
            failure = ChatStoreError(f"table {step.table!r} is missing at {self.where}")
        if failure is exc:
            raise exc
        raise failure from exc

    def send(self, step: Request) -> Any:
        """Run ``step`` with the sync client of its table; raise core errors."""
        for again in (False, True):
            if again or not self.store._tables_ready:
                self._ensure()
            try:
                return send_sync(self.sync_client(step.table), step)
            except Exception as exc:
                self._raise(exc, step, again)
        raise AssertionError("unreachable")

    async def asend(self, step: Request) -> Any:
        """Async :meth:`send` (with only a sync service client: in a worker thread)."""
        store = self.store
        if store.table_service_client is not None and store.atable_service_client is None:
            return await asyncio.to_thread(self.send, step)
        for again in (False, True):
            if again or not store._tables_ready:
                await self._aensure()
            try:
                return await send_async(self._async_client(step.table), step)
            except Exception as exc:
                self._raise(exc, step, again)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the sync clients; they are made again if used."""
        with self._lock:
            clients, self._sync = list(self._sync.values()), {}
        for client in clients:
            client.close()

    async def aclose(self) -> None:
        """Close this event loop's async clients (and the sync ones)."""
        clients = self._per_loop.take()
        if clients is not None:
            await _close_all(clients)
        self.close()
