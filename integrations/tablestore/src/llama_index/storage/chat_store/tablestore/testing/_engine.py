"""The emulator's storage engine: tables of rows kept in primary-key order, in memory.

Every operation runs under one lock, so each single-row operation is atomic like the
service's; BatchWriteRow applies its rows one by one and reports each row's outcome, and is
not atomic across rows (as in the service). Limits are the service's documented ones.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from llama_index.storage.chat_store.tablestore.testing._plainbuffer import (
    INF_MAX,
    INF_MIN,
    OP_DELETE_ALL,
    OP_DELETE_ONE,
    OP_INCREMENT,
    Cell,
    RequestRow,
    Value,
)

__all__ = [
    "EXPECT_EXIST",
    "EXPECT_NOT_EXIST",
    "IGNORE",
    "MAX_ATTRIBUTE_BYTES",
    "MAX_BATCH_GET_ROWS",
    "MAX_BATCH_WRITE_BYTES",
    "MAX_BATCH_WRITE_ROWS",
    "MAX_PK_BYTES",
    "MAX_RANGE_BYTES",
    "MAX_RANGE_ROWS",
    "Engine",
    "OTSError",
    "RowFilter",
    "StoredRow",
    "Table",
]

MAX_ATTRIBUTE_BYTES = 2 * 1024 * 1024
"""A STRING or BINARY attribute value holds at most 2 MB."""
MAX_PK_BYTES = 1024
"""A STRING or BINARY primary key value holds at most 1 KB."""
MAX_BATCH_GET_ROWS = 100
MAX_BATCH_WRITE_ROWS = 200
MAX_BATCH_WRITE_BYTES = 4 * 1024 * 1024
MAX_RANGE_ROWS = 5000
MAX_RANGE_BYTES = 4 * 1024 * 1024
MAX_TABLES = 64
"""Tables per instance (the service's default quota)."""

IGNORE, EXPECT_EXIST, EXPECT_NOT_EXIST = 0, 1, 2

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")

Key = tuple[Value, ...]
RowFilter = Callable[[dict[str, tuple[Value, int]]], bool]
"""A column condition: given a row's cells (empty for a missing row), whether it passes."""


class OTSError(Exception):
    """A service error: HTTP status, error code and message, as the service reports them."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _invalid(message: str) -> OTSError:
    return OTSError(400, "OTSParameterInvalid", message)


def _condition_failed() -> OTSError:
    return OTSError(403, "OTSConditionCheckFail", "Condition check failed.")


@dataclass
class StoredRow:
    """A row: primary key values in schema order and attribute cells (value, timestamp)."""

    key: Key
    cells: dict[str, tuple[Value, int]] = field(default_factory=dict)


@dataclass
class Table:
    """A table's schema and rows (sorted keys for ranges, a dict for point access)."""

    name: str
    primary_key: list[tuple[str, str]]
    options: dict[str, int]
    reserved: tuple[int, int]
    created: int
    keys: list[tuple[tuple[int, Value], ...]] = field(default_factory=list)
    rows: dict[Key, StoredRow] = field(default_factory=dict)

    def check_key(self, primary_key: list[tuple[str, Value]], *, bounds: bool = False) -> Key:
        """Validate a request's primary key against the schema; return its values."""
        names = [name for name, _ in primary_key]
        wanted = [name for name, _ in self.primary_key]
        if names != wanted:
            raise OTSError(
                400, "OTSInvalidPK", f"Validate PK name fail. Input: {names}, Meta: {wanted}."
            )
        values: list[Value] = []
        for (name, kind), (_, value) in zip(self.primary_key, primary_key, strict=True):
            if bounds and value in (INF_MIN, INF_MAX):
                values.append(value)
                continue
            expected = {"INTEGER": int, "STRING": str, "BINARY": bytes}[kind]
            if isinstance(value, bool) or not isinstance(value, expected):
                raise OTSError(
                    400, "OTSInvalidPK", f"Validate PK type fail. Input: {type(value).__name__}, "
                    f"Meta: {kind}, name: {name}."
                )  # fmt: skip
            size = len(value.encode("utf-8")) if isinstance(value, str) else 8
            if isinstance(value, bytes):
                size = len(value)
            if size > MAX_PK_BYTES:
                raise _invalid(
                    f"The length of pk: '{name}' exceeds the MaxLength:{MAX_PK_BYTES} with "
                    f"CurrentLength:{size}."
                )
            values.append(value)
        return tuple(values)

    @staticmethod
    def order(key: Key) -> tuple[tuple[int, Value], ...]:
        """The sort form of a key: INF_MIN sorts first, INF_MAX last, values in between."""
        return tuple((0, 0) if v is INF_MIN else (2, 0) if v is INF_MAX else (1, v) for v in key)

    def put(self, row: StoredRow) -> None:
        if row.key not in self.rows:
            bisect.insort(self.keys, self.order(row.key))
        self.rows[row.key] = row

    def delete(self, key: Key) -> None:
        if self.rows.pop(key, None) is not None:
            order = self.order(key)
            del self.keys[bisect.bisect_left(self.keys, order)]

    def scan(self, start: Key, end: Key, backward: bool) -> Iterator[StoredRow]:
        """Yield rows from ``start`` (inclusive) towards ``end`` (exclusive)."""
        low, high = self.order(start), self.order(end)
        if not backward:
            i = bisect.bisect_left(self.keys, low)
            while i < len(self.keys) and self.keys[i] < high:
                yield self.rows[tuple(v for _, v in self.keys[i])]
                i += 1
        else:
            i = bisect.bisect_right(self.keys, low) - 1
            while i >= 0 and self.keys[i] > high:
                yield self.rows[tuple(v for _, v in self.keys[i])]
                i -= 1


def _value_size(value: Value) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, bytes):
        return len(value)
    return 8


def row_size(key: Key, cells: dict[str, tuple[Value, int]]) -> int:
    """The data size of a row as the service counts it (names plus values)."""
    return sum(_value_size(v) for v in key) + sum(
        len(name) + _value_size(value) for name, (value, _) in cells.items()
    )


def _check_cells(cells: list[Cell]) -> None:
    for cell in cells:
        if not _NAME.fullmatch(cell.name):
            raise _invalid(f"Invalid column name: '{cell.name}'.")
        if (
            cell.value is not None
            and _value_size(cell.value) > MAX_ATTRIBUTE_BYTES
            and (isinstance(cell.value, (str, bytes)))
        ):
            raise _invalid(
                f"The length of attribute column: '{cell.name}' exceeds the MaxLength:"
                f"{MAX_ATTRIBUTE_BYTES} with CurrentLength:{_value_size(cell.value)}."
            )


class Engine:
    """All tables of one instance."""

    def __init__(self, max_tables: int = MAX_TABLES) -> None:
        self.lock = threading.RLock()
        self.tables: dict[str, Table] = {}
        self.max_tables = max_tables

    # -- tables ---------------------------------------------------------------------------

    def create_table(
        self,
        name: str,
        primary_key: list[tuple[str, str]],
        options: dict[str, int],
        reserved: tuple[int, int],
    ) -> None:
        if not _NAME.fullmatch(name):
            raise _invalid(f"Invalid table name: '{name}'.")
        if not 1 <= len(primary_key) <= 4:
            raise _invalid("The number of primary key columns must be in range: [1, 4].")
        for column, kind in primary_key:
            if not _NAME.fullmatch(column) or kind not in ("INTEGER", "STRING", "BINARY"):
                raise _invalid(f"Invalid primary key column: '{column}' ({kind}).")
        with self.lock:
            if name in self.tables:
                raise OTSError(409, "OTSObjectAlreadyExist", "Requested table already exists.")
            if len(self.tables) >= self.max_tables:
                raise OTSError(
                    403,
                    "OTSQuotaExhausted",
                    f"Number of tables exceeds the quota: {self.max_tables}.",
                )
            self.tables[name] = Table(
                name, primary_key, options, reserved, created=int(time.time())
            )

    def table(self, name: str) -> Table:
        try:
            return self.tables[name]
        except KeyError:
            raise OTSError(404, "OTSObjectNotExist", "Requested table does not exist.") from None

    def delete_table(self, name: str) -> None:
        with self.lock:
            self.table(name)
            del self.tables[name]

    def list_tables(self) -> list[str]:
        with self.lock:
            return sorted(self.tables)

    # -- rows -----------------------------------------------------------------------------

    @staticmethod
    def _check_condition(
        existing: StoredRow | None, expectation: int, row_filter: RowFilter | None
    ) -> None:
        if expectation == EXPECT_EXIST and existing is None:
            raise _condition_failed()
        if expectation == EXPECT_NOT_EXIST and existing is not None:
            raise _condition_failed()
        if row_filter is not None and not row_filter(existing.cells if existing else {}):
            raise _condition_failed()

    def put_row(
        self, table_name: str, row: RequestRow, expectation: int, row_filter: RowFilter | None
    ) -> Key:
        table = self.table(table_name)
        key = table.check_key(row.primary_key)
        _check_cells(row.cells)
        now = int(time.time() * 1000)
        with self.lock:
            self._check_condition(table.rows.get(key), expectation, row_filter)
            cells = {
                c.name: (c.value, c.timestamp or now) for c in row.cells if c.value is not None
            }
            table.put(StoredRow(key, cells))
        return key

    def update_row(
        self, table_name: str, row: RequestRow, expectation: int, row_filter: RowFilter | None
    ) -> Key:
        table = self.table(table_name)
        key = table.check_key(row.primary_key)
        _check_cells(row.cells)
        if expectation == EXPECT_NOT_EXIST:
            raise _invalid("Invalid condition: EXPECT_NOT_EXIST while updating row.")
        now = int(time.time() * 1000)
        with self.lock:
            existing = table.rows.get(key)
            self._check_condition(existing, expectation, row_filter)
            cells = dict(existing.cells) if existing else {}
            for cell in row.cells:
                if cell.op == OP_DELETE_ALL:
                    cells.pop(cell.name, None)
                elif cell.op == OP_DELETE_ONE:
                    if cell.name in cells and cells[cell.name][1] == cell.timestamp:
                        del cells[cell.name]
                elif cell.op == OP_INCREMENT:
                    current = cells.get(cell.name, (0, now))[0]
                    if not isinstance(cell.value, int) or not isinstance(current, int):
                        raise _invalid(f"Increment needs INTEGER values: '{cell.name}'.")
                    cells[cell.name] = (current + cell.value, now)
                elif cell.value is not None:
                    cells[cell.name] = (cell.value, cell.timestamp or now)
            table.put(StoredRow(key, cells))
        return key

    def delete_row(
        self, table_name: str, row: RequestRow, expectation: int, row_filter: RowFilter | None
    ) -> Key:
        table = self.table(table_name)
        key = table.check_key(row.primary_key)
        if expectation == EXPECT_NOT_EXIST:
            raise _invalid("Invalid condition: EXPECT_NOT_EXIST while deleting row.")
        with self.lock:
            self._check_condition(table.rows.get(key), expectation, row_filter)
            table.delete(key)
        return key

    def get_row(
        self, table_name: str, primary_key: list[tuple[str, Value]], columns: list[str]
    ) -> StoredRow | None:
        table = self.table(table_name)
        key = table.check_key(primary_key)
        with self.lock:
            stored = table.rows.get(key)
            return None if stored is None else self._project(table, stored, columns)

    @staticmethod
    def _project(table: Table, stored: StoredRow, columns: list[str]) -> StoredRow | None:
        if not columns:
            return StoredRow(stored.key, dict(stored.cells))
        cells = {name: stored.cells[name] for name in columns if name in stored.cells}
        wants_pk = any(name in columns for name, _ in table.primary_key)
        # The service leaves out a row that has none of the requested columns.
        return StoredRow(stored.key, cells) if cells or wants_pk else None

    def get_range(
        self,
        table_name: str,
        backward: bool,
        start: list[tuple[str, Value]],
        end: list[tuple[str, Value]],
        columns: list[str],
        limit: int | None,
        row_filter: RowFilter | None,
    ) -> tuple[list[StoredRow], Key | None]:
        """Return one page of rows and the key to continue from (``None`` when done)."""
        table = self.table(table_name)
        low = table.check_key(start, bounds=True)
        high = table.check_key(end, bounds=True)
        if limit is not None and limit <= 0:
            raise _invalid(f"The limit must be greater than 0: {limit}.")
        ordered = table.order(low) < table.order(high)
        if backward == ordered or low == high:
            direction = "BACKWARD" if backward else "FORWARD"
            relation = "larger" if backward else "less"
            raise _invalid(f"Begin key must {relation} than end key in {direction}.")
        page = min(limit or MAX_RANGE_ROWS, MAX_RANGE_ROWS)
        rows: list[StoredRow] = []
        size = 0
        with self.lock:
            for stored in table.scan(low, high, backward):
                if len(rows) >= page:
                    return rows, stored.key
                projected = self._project(table, stored, columns)
                # As in the service, a filter sees only the columns the request reads.
                if projected is None:
                    continue
                if row_filter is not None and not row_filter(projected.cells):
                    continue
                weight = row_size(projected.key, projected.cells)
                if rows and size + weight > MAX_RANGE_BYTES:
                    return rows, stored.key
                rows.append(projected)
                size += weight
        return rows, None
