"""The Postgres store's table: its layout found (or created) on first use."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import PrivateAttr
from sqlalchemy import TextClause, text

from llama_index.storage.chat_store.core import ConfigurationError
from llama_index.storage.chat_store.core.backend import Plan
from llama_index.storage.chat_store.postgres import _layouts, _schema
from llama_index.storage.chat_store.postgres._catalog import CatalogStatements, catalog_statements
from llama_index.storage.chat_store.postgres._config import _Config
from llama_index.storage.chat_store.postgres._drivers import RefusedError, Row
from llama_index.storage.chat_store.postgres._layouts import LayoutName, Statements
from llama_index.storage.chat_store.postgres._steps import Fetch, Transaction, run

_KEYS_PAGE = 100
# Another session creating the same objects first: a DDL run again finds them.
_DDL_RACE_STATES = {"23505", "42P07", "42710", "40P01"}
# How often one store forgets older records (any store on the table forgets everyone's).
_PRUNE_EVERY = 60.0


def lock_id(name: str) -> int:
    """An advisory lock's id: the first 64 bits of ``name``'s SHA-256."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


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
    catalog: CatalogStatements | None  # the native layout's
    pruning: _PruneClock = field(default_factory=_PruneClock)


class _Tables(_Config):
    """Finds the table's layout on first use, creating the tables if missing."""

    _resolved: _Resolved | None = PrivateAttr(default=None)

    def _candidates(self) -> list[str]:
        table = self.table_name
        return [
            table,
            f"data_{table}",
            _schema.conversations_table(table),
            _schema.catalog_index(table),
            _schema.ops_table(table),
            _schema.ops_table(f"data_{table}"),
        ]

    def _resolve(self, columns: list[Row]) -> _Resolved:
        """Pick the layout from :data:`_schema.DETECT`'s rows; list the DDL still needed."""
        tables: dict[str, dict[str, str]] = {}
        owned: set[str] = set()
        for table, column, type_, may_alter in columns:
            if table is None:  # the schema holds none of the tables
                continue
            tables.setdefault(table, {})[column] = type_
            if may_alter:
                owned.add(table)
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
            element = "jsonb" if self.use_jsonb else "json"
            ddl = _schema.create_statements(
                layout, self.schema_name, table, element_type=element, create_schema=not columns
            )
            return self._resolved_for(layout, table, element, ddl)
        detected, element = self._detect(table, found, tables)
        if wanted not in ("auto", detected):
            raise ConfigurationError(
                f"table {self.schema_name}.{table} already holds the {detected!r} layout, not "
                f"{wanted!r}: pass layout={detected!r} (or 'auto'), or choose another table_name"
            )
        # A table made by LlamaIndex, Google or an older version of this store gets its ops table.
        ops_statement = text(_schema.ops_statement(self.schema_name, table))
        ddl = [] if _schema.ops_table(table) in tables else [ops_statement]
        if detected == "native":
            ddl += self._catalog_migration(table, tables, owned)
        return self._resolved_for(detected, table, element, ddl)

    def _catalog_migration(
        self, table: str, tables: dict[str, dict[str, str]], owned: set[str]
    ) -> list[TextClause]:
        """The DDL giving a native table made before the catalog its columns and index.

        Adding a NULL column changes no row, so it is quick whatever the table holds; the
        index is built once. Run at first use, under the advisory lock where the server has
        it, like creation.

        Raises:
            ConfigurationError: The table needs it and this role may not alter the table
                (the message holds the statements for its owner to run).
        """
        conv = _schema.conversations_table(table)
        if _schema.CATALOG_COLUMNS.keys() <= tables[conv].keys() and (
            _schema.catalog_index(table) in tables
        ):
            return []
        statements = _schema.catalog_ddl(self.schema_name, table)
        if conv not in owned:
            raise ConfigurationError(
                f"table {self.schema_name}.{conv} was made by an earlier version of this store "
                "and lacks the conversation catalog's columns, which this role may not add; "
                "run as the table's owner (once, any time; the store then uses them):\n"
                + ";\n".join(statements)
                + ";"
            )
        return [text(statement) for statement in statements]

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
        catalog = catalog_statements(self.schema_name, table) if layout == "native" else None
        return _Resolved(statements=statements, ddl=ddl, catalog=catalog)

    def _layout_in_use(self) -> LayoutName:
        """The layout of the table found on first use; before it, the one configured."""
        resolved = self._resolved
        return super()._layout_in_use() if resolved is None else resolved.statements.layout

    def _table_plan(self) -> Plan[_Resolved]:
        """The resolved table: found, or created if missing, on first use."""
        resolved = self._resolved
        if resolved is not None:
            return resolved
        names = {"schema": self.schema_name, "names": self._candidates()}
        for attempt in range(2):
            resolved = self._resolve((yield from run(Fetch(_schema.DETECT, names))))
            if not resolved.ddl:
                break
            try:
                resolved = yield from run(Transaction(lambda: self._create_plan(names)))
                break
            except RefusedError as refused:
                if attempt or refused.state not in _DDL_RACE_STATES:
                    raise
        assert resolved is not None
        self._resolved = resolved
        return resolved

    def _create_plan(self, names: dict[str, Any]) -> Plan[_Resolved]:
        """Create the missing tables (a transaction's body).

        Under the lock, look again: another session may have just made the tables, and even
        a no-op CREATE INDEX locks the table against writers already using it (a deadlock
        with their appends).
        """
        if self._ddl_advisory_lock:
            yield Fetch(
                _schema.ADVISORY_LOCK, {"lock": lock_id(f"{self.schema_name}.{self.table_name}")}
            )
        found = self._resolve((yield Fetch(_schema.DETECT, names)))
        yield from _each(found.ddl)
        return found

    def _drop_plan(self) -> Plan[None]:
        layout = self._default_layout if self.layout == "auto" else self.layout
        drops = _schema.drop_statements(layout, self.schema_name, self.table_name)
        yield from run(Transaction(lambda: _each(drops)))
        self._resolved = None

    def init_table(self, overwrite_existing: bool = False) -> None:
        """Create the tables now instead of on first use (idempotent).

        Args:
            overwrite_existing: Drop this store's tables first (their data is lost).
        """
        if overwrite_existing:
            self._change(lambda _: self._drop_plan())
        self._change(lambda _: self._table_plan())

    async def ainit_table(self, overwrite_existing: bool = False) -> None:
        """Async :meth:`init_table`."""
        if overwrite_existing:
            await self._achange(lambda _: self._drop_plan())
        await self._achange(lambda _: self._table_plan())

    def _keys_plan(self, cursor: Any) -> Plan[tuple[Sequence[str], Any]]:
        """A page of 100 keys holding messages, after key ``cursor``."""
        st = (yield from self._table_plan()).statements
        page = {"after": cursor or "", "page": _KEYS_PAGE}
        keys = [key for (key,) in (yield from run(Fetch(st.keys_page, page)))]
        return keys, (keys[-1] if len(keys) == _KEYS_PAGE else None)

    def _clear_plan(self) -> Plan[None]:
        """Remove every conversation in this store's table.

        Waits for the writers at work on the table, so none of their writes is half kept.
        The records of recent changes stay (a retry of a change made before must still
        find it applied); they are forgotten as they age.
        """
        st = (yield from self._table_plan()).statements
        if st.lock_all is None:
            yield from run(Fetch(st.clear, {}))
        else:
            yield from run(Transaction(lambda: _each([st.lock_all, st.clear])))

    def _sweep_plan(self) -> Plan[int]:
        st = (yield from self._table_plan()).statements
        yield from run(Fetch(st.prune, {"keep": self._record_seconds()}))
        return 0 if st.sweep is None else int((yield from run(Fetch(st.sweep, {})))[0][0])

    def sweep(self) -> int:
        """Purge expired conversations (and emptied bookkeeping rows); return how many.

        Expired conversations are already invisible to reads; this reclaims their space.
        Also forgets the records of changes older than the retries that could need them.
        """
        return self._change(lambda _: self._sweep_plan())

    async def asweep(self) -> int:
        """Async :meth:`sweep`."""
        return await self._achange(lambda _: self._sweep_plan())


def _each(statements: Sequence[TextClause | None]) -> Plan[None]:
    """Run ``statements`` in order, without parameters (a transaction's body)."""
    for statement in statements:
        assert statement is not None
        yield Fetch(statement, {})
