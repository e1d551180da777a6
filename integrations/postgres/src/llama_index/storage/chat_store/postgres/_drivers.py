"""Connections: held driver connections running one autocommit statement per operation.

SQLAlchemy's ``begin``/``commit`` around a statement costs several round trips, and a
pool checkout with reset costs one more. The hot path here is one statement on a
connection this store already holds: a sync DBAPI connection (psycopg 3, psycopg2,
pg8000: whichever the SQLAlchemy engine's dialect uses) or an asyncpg connection.
Transactions are explicit and only where an operation needs two statements.
``fetch_many`` runs one statement for several parameter sets in one transaction and, with
asyncpg or psycopg 3, one round trip: the messages go out together with a single Sync, which
ends the implicit transaction they share (each run still takes its own snapshot under READ
COMMITTED, after the previous run ended).

Statements are SQLAlchemy ``text()`` clauses compiled once per dialect (``$1`` for
asyncpg, ``%(name)s`` for psycopg, ``%s`` for pg8000).

A statement the server refused for another session's work (a deadlock, a serialization
failure, a unique violation, a DDL race) raises :class:`RefusedError`, the kit's
:class:`ConflictError`: the store's plan decides what to do (run a rolled-back step again,
look an operation id up). Nothing is run again here: a lost connection raises
:class:`BackendUnavailableError` (:class:`NotSentError` when the connection could not even
be opened, so nothing of the call was sent) and the store retries the whole call with its
operation id.

Async connections belong to one event loop, so each loop gets its own set, created
lazily; a set left behind by a closed loop is dropped when noticed. A call cancelled
while it waits for the server leaves its connection to asyncpg's own cancellation
(the next user of the connection waits for it), and a cancelled connect finishes in the
background and is closed, so nothing is left half-open or unretrieved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import TextClause
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendUnavailableError,
    ChatStoreError,
    NotSentError,
)
from llama_index.storage.chat_store.core.backend import ConflictError, PerLoop

__all__ = [
    "ATTEMPTS",
    "CONFLICT_STATES",
    "AsyncConnections",
    "AsyncRunner",
    "Compiled",
    "RefusedError",
    "Runner",
    "SyncConnections",
    "translate_error",
]

Row = Sequence[Any]
_log = logging.getLogger(__name__)
Params = dict[str, Any]
T = TypeVar("T")

# SQLSTATE classes: 08 connection exception, 57P01-03 server shutting down/starting,
# 28 authentication, 42501 insufficient privilege.
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300")
_AUTH_STATES = ("28", "42501")
# 40001 serialization failure, 40P01 deadlock detected: the server rolled the work back.
CONFLICT_STATES = ("40001", "40P01")
ATTEMPTS = 6
"""Times a plan runs a step the server rolled back for a conflict (see ``CONFLICT_STATES``)."""
# 23505 unique violation (an operation id already recorded; a DDL race), 42P07 and 42710
# (a relation or object another session created first).
_REFUSED_STATES = ("23505", "42P07", "42710", *CONFLICT_STATES)
_AUTH_PHRASES = ("authentication failed", "no password supplied", "password is required")
_UNAVAILABLE_PHRASES = (
    "connection refused",
    "could not connect",
    "server closed the connection",
    "connection is closed",
    "connection was closed",
    "the connection is lost",
    "terminating connection",
    "connection already closed",
    "consuming input failed",
    "network is unreachable",
    "timeout",
    "timed out",
    "the database system is",
    "broken pipe",
    "connection reset",
    "no connection to the server",
    "unexpectedly",
)


class Compiled:
    """A statement compiled for one dialect, with its parameter order if positional."""

    __slots__ = ("names", "sql")

    def __init__(self, clause: TextClause, dialect: Dialect) -> None:
        compiled = clause.compile(dialect=dialect)
        self.sql: str = compiled.string
        positional = compiled.positional
        self.names: tuple[str, ...] | None = (
            tuple(compiled.positiontup or ()) if positional else None
        )

    def args(self, params: Params) -> tuple[Any, ...]:
        """Return the values in positional order (positional paramstyles only)."""
        assert self.names is not None
        return tuple(params[name] for name in self.names)


def _sqlstate(exc: BaseException) -> str:
    for attr in ("sqlstate", "pgcode"):
        value = getattr(exc, attr, None)
        if isinstance(value, str):
            return value
    first = exc.args[0] if exc.args else None
    if isinstance(first, dict):  # pg8000 puts the server's error fields in a dict
        return str(first.get("C", ""))
    return ""


def translate_error(exc: BaseException, where: str) -> ChatStoreError | None:
    """Map a driver error to core's errors (``None``: not a connection/credential problem).

    Args:
        exc: The driver's (or SQLAlchemy's) exception.
        where: The server, password masked, named in the message.
    """
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    state = _sqlstate(cause)
    text = str(cause).lower()
    if state.startswith(_AUTH_STATES) or any(p in text for p in _AUTH_PHRASES):
        return AuthenticationError(f"{where} rejected the credentials: {cause}")
    if (
        state.startswith(_UNAVAILABLE_STATES)
        or isinstance(cause, (OSError, asyncio.TimeoutError, EOFError))
        or (not state and any(p in text for p in _UNAVAILABLE_PHRASES))
        or (type(cause).__name__ in {"InterfaceError", "OperationalError"} and not state)
    ):
        return BackendUnavailableError(f"cannot reach {where}: {cause}")
    if state in CONFLICT_STATES:
        return RefusedError(
            f"{where} rolled the operation back {ATTEMPTS} times in a row because of "
            f"concurrent writers ({cause}); nothing was changed, try again",
            state,
        )
    if state in _REFUSED_STATES:
        return RefusedError(f"{where}: {cause}", state)
    return None


class RefusedError(ChatStoreError, ConflictError):
    """A statement the server refused for another session's work; ``state``: its SQLSTATE.

    A :class:`ConflictError`, so the kit throws it into the plan that sent the step;
    a :class:`ChatStoreError` for the caller when the plan lets it go.
    """

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


def _not_sent(exc: Exception, where: str) -> ChatStoreError:
    """The error of a connection that failed to open: no request of the call was sent."""
    error = translate_error(exc, where) or BackendUnavailableError(
        f"cannot connect to {where}: {exc}"
    )
    if type(error) is BackendUnavailableError:
        return NotSentError(str(error))
    return error


class _Compiling:
    """Statements compiled once per connections object, for the dialect ``dialect()`` gives."""

    def __init__(self, dialect: Callable[[], Dialect]) -> None:
        self._dialect = dialect
        self._compiled: dict[int, tuple[TextClause, Compiled]] = {}

    def compiled(self, clause: TextClause) -> Compiled:
        """Return ``clause`` compiled for this dialect (cached)."""
        hit = self._compiled.get(id(clause))
        if hit is not None and hit[0] is clause:
            return hit[1]
        compiled = Compiled(clause, self._dialect())
        self._compiled[id(clause)] = (clause, compiled)
        return compiled


def _discard(connection: PoolProxiedConnection) -> None:
    """Take a connection the network has cut out of its pool, and close it here.

    The pool would close it itself on ``invalidate()``, and log an ERROR with a traceback
    when that close fails, as pg8000's does on a cut socket (it first writes a Terminate
    message). Here that failure is expected: the call already failed for want of the server
    and says so. Detached, the connection no longer counts against the pool, which opens a
    new one when one is needed.
    """
    driver = connection.dbapi_connection
    connection.detach()
    try:
        if driver is not None:
            driver.close()
    except Exception:
        _log.debug("closing a connection cut by the network failed", exc_info=True)


class Runner(NamedTuple):
    """Runs statements on one held sync connection (inside or outside a transaction)."""

    owner: SyncConnections
    connection: PoolProxiedConnection

    def fetch(self, clause: TextClause, params: Params) -> list[Row]:
        compiled = self.owner.compiled(clause)
        cursor = self.connection.cursor()
        try:
            cursor.execute(
                compiled.sql, params if compiled.names is None else compiled.args(params)
            )
            return list(cursor.fetchall()) if cursor.description is not None else []
        finally:
            cursor.close()


def _pipelined(driver: Any, sql: str, params_list: Sequence[Params]) -> list[Row]:
    """Run ``sql`` for each parameter set in one psycopg 3 pipeline; return all rows.

    In autocommit mode the pipeline sends one Sync at its end: every run is part of one
    implicit transaction, and a failed run skips the rest and rolls the transaction back.
    """
    cursors = []
    with driver.pipeline():
        for params in params_list:
            cursor = driver.cursor()
            cursor.execute(sql, params)
            cursors.append(cursor)
    rows: list[Row] = []
    for cursor in cursors:
        if cursor.description is not None:
            rows.extend(cursor.fetchall())
        cursor.close()
    return rows


def _psycopg_pipelines(dialect: Dialect) -> bool:
    """Whether connections of ``dialect`` are psycopg 3 ones whose libpq can pipeline."""
    if dialect.driver != "psycopg":
        return False
    from psycopg import Pipeline

    return Pipeline.is_supported()


class SyncConnections(_Compiling):
    """Sync DBAPI connections held from a SQLAlchemy engine, in autocommit mode.

    Thread-safe: each call takes an idle connection (or opens one) and gives it back.
    """

    def __init__(
        self, engine_factory: Callable[[], Engine], where: str, *, owns_engine: bool = True
    ) -> None:
        super().__init__(lambda: self._get_engine().dialect)
        self._engine_factory = engine_factory
        self._engine: Engine | None = None
        self._owns_engine = owns_engine
        self._where = where
        self._idle: list[PoolProxiedConnection] = []
        self._lock = threading.Lock()

    def _get_engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._engine_factory()
            return self._engine

    @contextlib.contextmanager
    def _connection(self) -> Iterator[PoolProxiedConnection]:
        try:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                connection = self._get_engine().raw_connection()
                connection.driver_connection.autocommit = True  # type: ignore[union-attr]
        except ChatStoreError:
            raise
        except Exception as exc:
            raise _not_sent(exc, self._where) from exc
        try:
            yield connection
        except ChatStoreError:
            self._release(connection)
            raise
        except Exception as exc:
            error = translate_error(exc, self._where) or ChatStoreError(f"{self._where}: {exc}")
            if isinstance(error, BackendUnavailableError):
                # The server went away: every held connection is likely dead too.
                with self._lock:
                    idle, self._idle = self._idle, []
                for held in [connection, *idle]:
                    _discard(held)
            else:
                self._release(connection)
            raise error from exc
        except BaseException:
            # Interrupted mid-call (KeyboardInterrupt): the connection's state is unknown.
            with contextlib.suppress(Exception):
                connection.invalidate()
            raise
        else:
            self._release(connection)

    def _release(self, connection: PoolProxiedConnection) -> None:
        with self._lock:
            self._idle.append(connection)

    def fetch(self, clause: TextClause, params: Params) -> list[Row]:
        """Run one autocommit statement; return its rows."""
        with self._connection() as connection:
            return Runner(self, connection).fetch(clause, params)

    def fetch_many(self, clause: TextClause, params_list: Sequence[Params]) -> list[Row]:
        """Run ``clause`` once per parameter set, in order, in one transaction; return all rows.

        One round trip with psycopg 3 (a pipeline); other drivers run a transaction.
        """
        if not _psycopg_pipelines(self._dialect()):
            return self.transaction(
                lambda tx: [row for params in params_list for row in tx.fetch(clause, params)]
            )
        sql = self.compiled(clause).sql
        with self._connection() as connection:
            return _pipelined(connection.driver_connection, sql, params_list)

    def transaction(self, body: Callable[[Runner], T]) -> T:
        """Run ``body``'s statements in one transaction; return what ``body`` returns.

        Rolled back on any error.
        """
        with self._connection() as connection:
            driver = connection.driver_connection
            driver.autocommit = False  # type: ignore[union-attr]
            try:
                result = body(Runner(self, connection))
                connection.commit()
                return result
            except BaseException:
                with contextlib.suppress(Exception):
                    connection.rollback()
                raise
            finally:
                with contextlib.suppress(Exception):
                    driver.autocommit = True  # type: ignore[union-attr]

    def close(self) -> None:
        """Return held connections and dispose of the engine if this store made it."""
        with self._lock:
            idle, self._idle = self._idle, []
            engine, self._engine = self._engine, None
        for connection in idle:
            with contextlib.suppress(Exception):
                connection.close()
        if engine is not None and self._owns_engine:
            engine.dispose()


AsyncConnect = Callable[[], Awaitable[Any]]
"""Opens one asyncpg connection (``asyncpg.connect``, a Google connector, a user's engine)."""


class _LoopConnections:
    def __init__(self, limit: int) -> None:
        self.idle: list[Any] = []
        self.slots = asyncio.Semaphore(limit)


class AsyncRunner(NamedTuple):
    """Runs statements on one held asyncpg connection (inside or outside a transaction)."""

    owner: AsyncConnections
    connection: Any

    async def fetch(self, clause: TextClause, params: Params) -> list[Row]:
        compiled = self.owner.compiled(clause)
        rows: list[Row] = await self.connection.fetch(compiled.sql, *compiled.args(params))
        return rows


class AsyncConnections(_Compiling):
    """asyncpg connections per event loop, held and reused without a reset round trip."""

    def __init__(self, connect: AsyncConnect, where: str, *, limit: int = 10) -> None:
        from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

        asyncpg = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
        super().__init__(lambda: asyncpg)
        self._connect = connect
        self._where = where
        # Closed inside their loop when it shuts down (asyncio.run does); a closed loop's
        # connections cannot be closed politely: terminate them.
        self._loops = PerLoop(
            lambda: _LoopConnections(limit),
            on_drop=lambda stale: _abandon(stale.idle),
            aclose=lambda state: _close_all(state.idle),
        )

    async def _open(self) -> Any:
        """Open one connection; cancelling the caller never cancels the connect itself.

        asyncpg's connect, cancelled half-way, can leave a future whose exception nobody
        retrieves (logged as "Future exception was never retrieved"). Shielded, it runs to
        its end, and a connection nobody waits for any more is closed.
        """
        opening = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_unwanted)
            raise

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        state = self._loops.get()
        async with state.slots:
            connection = state.idle.pop() if state.idle else None
            if connection is None or connection.is_closed():
                try:
                    connection = await self._open()
                except ChatStoreError:
                    raise
                except Exception as exc:
                    raise _not_sent(exc, self._where) from exc
            try:
                yield connection
            except ChatStoreError:
                state.idle.append(connection)
                raise
            except Exception as exc:
                error = translate_error(exc, self._where) or ChatStoreError(f"{self._where}: {exc}")
                if isinstance(error, BackendUnavailableError):
                    _abandon([connection, *state.idle])
                    state.idle.clear()
                else:
                    state.idle.append(connection)
                raise error from exc
            except BaseException:
                # Cancelled mid-call: asyncpg asks the server to cancel the statement and
                # makes the connection's next user wait for that, so it can be reused;
                # one still inside a transaction (its rollback interrupted) cannot.
                if connection.is_closed() or connection.is_in_transaction():
                    _abandon([connection])
                else:
                    state.idle.append(connection)
                raise
            else:
                state.idle.append(connection)

    async def fetch(self, clause: TextClause, params: Params) -> list[Row]:
        """Run one autocommit statement; return its rows."""
        async with self._connection() as connection:
            return await AsyncRunner(self, connection).fetch(clause, params)

    async def fetch_many(self, clause: TextClause, params_list: Sequence[Params]) -> list[Row]:
        """Run ``clause`` once per parameter set, in order, in one transaction and round trip.

        asyncpg's ``fetchmany`` binds and executes every set, then sends one Sync.
        """
        compiled = self.compiled(clause)
        args = [compiled.args(params) for params in params_list]
        async with self._connection() as connection:
            rows: list[Row] = await connection.fetchmany(compiled.sql, args)
            return rows

    async def transaction(self, body: Callable[[AsyncRunner], Awaitable[T]]) -> T:
        """Run ``body``'s statements in one transaction; return what ``body`` returns.

        Rolled back on any error.
        """
        async with self._connection() as connection, connection.transaction():
            return await body(AsyncRunner(self, connection))

    async def aclose(self) -> None:
        """Close this loop's connections; drop those of other loops."""
        loop = asyncio.get_running_loop()
        for owner, state in self._loops.take_all():
            if owner is loop:
                await _close_all(state.idle)
            else:
                _abandon(state.idle)

    def close(self) -> None:
        """Drop every loop's connections without awaiting (from sync code)."""
        for loop, state in self._loops.take_all():
            # Transports are not thread-safe: close them on their own loop (closed loops'
            # connections were terminated by take_all's on_drop).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_abandon, state.idle)


def _close_unwanted(opening: asyncio.Future[Any]) -> None:
    """Close the connection a cancelled caller no longer waits for; retrieve its error."""
    if opening.cancelled():
        return
    if opening.exception() is None:
        _abandon([opening.result()])


async def _close_all(connections: list[Any]) -> None:
    """Close connections of the running loop politely."""
    for connection in connections:
        with contextlib.suppress(Exception):
            await connection.close(timeout=2)


def _abandon(connections: list[Any]) -> None:
    """Close connections without awaiting (their loop may be closed or elsewhere)."""
    for connection in connections:
        with contextlib.suppress(Exception):
            connection.terminate()
