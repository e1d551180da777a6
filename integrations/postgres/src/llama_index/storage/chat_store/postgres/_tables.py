"""The Postgres store's table: its layout found (or created) on first use."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import PrivateAttr
from sqlalchemy import TextClause, text

from llama_index.storage.chat_store.core import ConfigurationError
from llama_index.storage.chat_store.postgres import _layouts, _schema
from llama_index.storage.chat_store.postgres._config import _Config
from llama_index.storage.chat_store.postgres._drivers import AsyncRunner, Row, Runner
from llama_index.storage.chat_store.postgres._layouts import LayoutName, Statements

_KEYS_PAGE = 100
_DDL_RACE_STATES = {"23505", "42P07", "42710", "40P01"}
# How often one store forgets older records (any store on the table forgets everyone's).
_PRUNE_EVERY = 60.0


class _PruneClock:
    """When a store next forgets old change records: at most once a minute per table."""

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next = time.monotonic() + _PRUNE_EVERY

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + _PRUNE_EVERY
        return True


@dataclass(frozen=True)
class _Resolved:
    """The table this store uses, found (or created) on first use."""

    statements: Statements
    ddl: list[TextClause]
    pruning: _PruneClock = field(default_factory=_PruneClock)


def _ddl_race(exc: BaseException) -> bool:
    """Whether a DDL error is another session creating the same objects first."""
    cause: BaseException | None = exc
    while cause is not None:
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if state in _DDL_RACE_STATES:
            return True
        cause = cause.__cause__ or getattr(cause, "orig", None)
    return False


class _Tables(_Config):
    """Finds the table's layout on first use, creating the tables if missing."""

    _resolved: _Resolved | None = PrivateAttr(default=None)

    def _candidates(self) -> list[str]:
        table = self.table_name
        return [
            table,
            f"data_{table}",
            _schema.conversations_table(table),
            _schema.ops_table(table),
            _schema.ops_table(f"data_{table}"),
        ]

    def _resolve(self, columns: list[Row], schema_exists: bool) -> _Resolved:
        """Pick the layout from the existing tables' columns; list the DDL still needed."""
        tables: dict[str, dict[str, str]] = {}
        for table, column, type_ in columns:
            tables.setdefault(table, {})[column] = type_
        wanted = self.layout
        table = self.table_name
        found = tables.get(table)
        legacy = tables.get(f"data_{table}")
        if found is None and legacy is not None and "value" in legacy:
            table, found = f"data_{table}", legacy
        if found is None:
            layout: LayoutName = self._default_layout if wanted == "auto" else wanted
            if layout == "llama_index":
                table = f"{self._llama_index_prefix}{table}"
            return self._resolved_for(layout, table, "jsonb" if self.use_jsonb else "json", [
                *_schema.create_statements(
                    layout, self.schema_name, table,
                    element_type="jsonb" if self.use_jsonb else "json",
                    create_schema=not schema_exists,
                )
            ])  # fmt: skip
        detected, element = self._detect(table, found, tables)
        ops_statement = _schema.ops_statement(self.schema_name, table)
        if wanted not in ("auto", detected):
            raise ConfigurationError(
                f"table {self.schema_name}.{table} already holds the {detected!r} layout, not "
                f"{wanted!r}: pass layout={detected!r} (or 'auto'), or choose another table_name"
            )
        # A table made by LlamaIndex, Google or an older version of this store gets its ops table.
        ddl = [] if _schema.ops_table(table) in tables else [text(ops_statement)]
        return self._resolved_for(detected, table, element, ddl)

    def _detect(
        self, table: str, columns: dict[str, str], tables: dict[str, dict[str, str]]
    ) -> tuple[LayoutName, str]:
        value = columns.get("value", "")
        if {"key", "value"} <= columns.keys() and value.endswith("[]"):
            return "llama_index", value[:-2]
        if {"id", "key", "message"} <= columns.keys():
            if _schema.conversations_table(table) in tables:
                return "native", "json"
            return "google", "json"
        raise ConfigurationError(
            f"table {self.schema_name}.{table} exists but is not a chat store table "
            f"(columns {sorted(columns)}); choose another table_name"
        )

    def _resolved_for(
        self, layout: LayoutName, table: str, element: str, ddl: list[TextClause]
    ) -> _Resolved:
        if self.ttl is not None and layout != "native":
            raise ConfigurationError(
                f"ttl needs the native layout; table {self.schema_name}.{table} uses {layout!r}"
            )
        statements = _layouts.statements_for(
            layout,
            self.schema_name,
            table,
            element,
            refresh_on_read=self.refresh_on_read,
            row_versions=self._row_versions,
        )
        return _Resolved(statements=statements, ddl=ddl)

    def _lock_id(self) -> int:
        digest = hashlib.sha256(f"{self.schema_name}.{self.table_name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _statements(self) -> Statements:
        resolved = self._resolved
        if resolved is not None:
            return resolved.statements
        connections = self._connections()
        for attempt in range(2):
            names = {"schema": self.schema_name, "names": self._candidates()}
            columns = connections.fetch(_schema.DETECT, names)
            schema_exists = bool(
                connections.fetch(_schema.SCHEMA_EXISTS, {"schema": self.schema_name})[0][0]
            )
            resolved = self._resolve(columns, schema_exists)
            try:
                if resolved.ddl:

                    def create(tx: Runner, names: dict[str, Any] = names) -> _Resolved:
                        # Under the lock, look again: another session may have just made
                        # the tables, and even a no-op CREATE INDEX locks the table against
                        # writers already using it (a deadlock with their appends).
                        if self._ddl_advisory_lock:
                            tx.fetch(_schema.ADVISORY_LOCK, {"lock": self._lock_id()})
                        columns = tx.fetch(_schema.DETECT, names)
                        exists = tx.fetch(_schema.SCHEMA_EXISTS, {"schema": self.schema_name})
                        found = self._resolve(columns, bool(exists[0][0]))
                        for statement in found.ddl:
                            tx.fetch(statement, {})
                        return found

                    resolved = connections.transaction(create)
                break
            except Exception as exc:
                if attempt or not _ddl_race(exc):
                    raise
        assert resolved is not None
        self._resolved = resolved
        return resolved.statements

    async def _astatements(self) -> Statements:
        resolved = self._resolved
        if resolved is not None:
            return resolved.statements
        connections = self._aconnections()
        for attempt in range(2):
            names = {"schema": self.schema_name, "names": self._candidates()}
            columns = await connections.fetch(_schema.DETECT, names)
            schema_rows = await connections.fetch(
                _schema.SCHEMA_EXISTS, {"schema": self.schema_name}
            )
            resolved = self._resolve(columns, bool(schema_rows[0][0]))
            try:
                if resolved.ddl:

                    async def create(tx: AsyncRunner, names: dict[str, Any] = names) -> _Resolved:
                        if self._ddl_advisory_lock:
                            await tx.fetch(_schema.ADVISORY_LOCK, {"lock": self._lock_id()})
                        columns = await tx.fetch(_schema.DETECT, names)
                        schema = {"schema": self.schema_name}
                        exists = await tx.fetch(_schema.SCHEMA_EXISTS, schema)
                        found = self._resolve(columns, bool(exists[0][0]))
                        for statement in found.ddl:
                            await tx.fetch(statement, {})
                        return found

                    resolved = await connections.transaction(create)
                break
            except Exception as exc:
                if attempt or not _ddl_race(exc):
                    raise
        assert resolved is not None
        self._resolved = resolved
        return resolved.statements

    def _table(self) -> _Resolved:
        """The resolved table (resolving it on first use)."""
        resolved = self._resolved
        if resolved is None:
            self._statements()
            resolved = self._resolved
            assert resolved is not None
        return resolved

    async def _atable(self) -> _Resolved:
        """Async :meth:`_table`."""
        resolved = self._resolved
        if resolved is None:
            await self._astatements()
            resolved = self._resolved
            assert resolved is not None
        return resolved

    def init_table(self, overwrite_existing: bool = False) -> None:
        """Create the tables now instead of on first use (idempotent).

        Args:
            overwrite_existing: Drop this store's tables first (their data is lost).
        """
        if overwrite_existing:
            drops = self._drop_statements()

            def drop(tx: Runner) -> None:
                for statement in drops:
                    tx.fetch(statement, {})

            self._retried(lambda: self._connections().transaction(drop), mutates=True)
            self._resolved = None
        self._retried(self._statements, mutates=True)

    def _drop_statements(self) -> list[TextClause]:
        layout = self._default_layout if self.layout == "auto" else self.layout
        return _schema.drop_statements(layout, self.schema_name, self.table_name)

    async def ainit_table(self, overwrite_existing: bool = False) -> None:
        """Async :meth:`init_table`."""
        if overwrite_existing:
            drops = self._drop_statements()

            async def drop(tx: AsyncRunner) -> None:
                for statement in drops:
                    await tx.fetch(statement, {})

            await self._aretried(lambda: self._aconnections().transaction(drop), mutates=True)
            self._resolved = None
        await self._aretried(self._astatements, mutates=True)

    def iter_keys(self) -> Iterator[str]:
        """Yield the keys holding messages, in pages of 100 (constant memory)."""
        after = ""
        while True:
            page: dict[str, Any] = {"after": after, "page": _KEYS_PAGE}

            def fetch(page: dict[str, Any] = page) -> list[Row]:
                return self._connections().fetch(self._statements().keys_page, page)

            rows = self._retried(fetch)
            for (key,) in rows:
                yield key
            if len(rows) < _KEYS_PAGE:
                return
            after = rows[-1][0]

    def clear(self) -> None:
        """Remove every conversation in this store's table.

        Waits for the writers at work on the table, so none of their writes is half kept.
        The records of recent changes stay (a retry of a change made before must still
        find it applied); they are forgotten as they age.
        """

        def clear() -> None:
            st = self._statements()
            lock_all = st.lock_all
            if lock_all is None:
                self._connections().fetch(st.clear, {})
                return

            def locked(tx: Runner) -> None:
                tx.fetch(lock_all, {})
                tx.fetch(st.clear, {})

            self._connections().transaction(locked)

        self._retried(clear, mutates=True)

    def sweep(self) -> int:
        """Purge expired conversations (and emptied bookkeeping rows); return how many.

        Expired conversations are already invisible to reads; this reclaims their space.
        Also forgets the records of changes older than the retries that could need them.
        """

        def sweep() -> int:
            st = self._statements()
            connections = self._connections()
            connections.fetch(st.prune, {"keep": self._record_seconds()})
            return 0 if st.sweep is None else int(connections.fetch(st.sweep, {})[0][0])

        return self._retried(sweep, mutates=True)

    async def aiter_keys(self) -> AsyncIterator[str]:
        """Async :meth:`iter_keys`."""
        after = ""
        while True:
            page = {"after": after, "page": _KEYS_PAGE}

            async def fetch(page: dict[str, Any] = page) -> list[Row]:
                st = await self._astatements()
                return await self._aconnections().fetch(st.keys_page, page)

            rows = await self._aretried(fetch)
            for (key,) in rows:
                yield key
            if len(rows) < _KEYS_PAGE:
                return
            after = rows[-1][0]

    async def aclear(self) -> None:
        """Async :meth:`clear`."""

        async def clear() -> None:
            st = await self._astatements()
            lock_all = st.lock_all
            if lock_all is None:
                await self._aconnections().fetch(st.clear, {})
                return

            async def locked(tx: AsyncRunner) -> None:
                await tx.fetch(lock_all, {})
                await tx.fetch(st.clear, {})

            await self._aconnections().transaction(locked)

        await self._aretried(clear, mutates=True)

    async def asweep(self) -> int:
        """Async :meth:`sweep`."""

        async def sweep() -> int:
            st = await self._astatements()
            connections = self._aconnections()
            await connections.fetch(st.prune, {"keep": self._record_seconds()})
            return 0 if st.sweep is None else int((await connections.fetch(st.sweep, {}))[0][0])

        return await self._aretried(sweep, mutates=True)
