"""PlainBuffer, Tablestore's tagged binary row format, read and written server-side.

The SDK ships a writer and a reader, but its reader is the client's: it cannot decode range
bounds (``INF_MIN``/``INF_MAX``) nor UpdateRow cells (it trips on the cell-type tag). So the
emulator reads every request row here, checking each cell's and each row's CRC-8 the way
the service does, and writes response rows here too.

Layout of one row: ``TAG_ROW_PK cell*`` then optionally ``TAG_ROW_DATA cell*``, an optional
``TAG_DELETE_ROW_MARKER``, and ``TAG_ROW_CHECKSUM crc``. A buffer starts with the 32-bit
little-endian header ``0x75`` followed by one or more rows. A cell is ``TAG_CELL``,
``TAG_CELL_NAME len name``, an optional ``TAG_CELL_VALUE len type payload``, an optional
``TAG_CELL_TYPE op``, an optional ``TAG_CELL_TIMESTAMP int64``, then ``TAG_CELL_CHECKSUM crc``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "AUTO_INCREMENT",
    "INF_MAX",
    "INF_MIN",
    "OP_DELETE_ALL",
    "OP_DELETE_ONE",
    "OP_INCREMENT",
    "Cell",
    "PlainBufferError",
    "RequestRow",
    "Value",
    "read_row",
    "read_value",
    "write_primary_key",
    "write_rows",
]

HEADER = 0x75
TAG_ROW_PK = 0x01
TAG_ROW_DATA = 0x02
TAG_CELL = 0x03
TAG_CELL_NAME = 0x04
TAG_CELL_VALUE = 0x05
TAG_CELL_TYPE = 0x06
TAG_CELL_TIMESTAMP = 0x07
TAG_DELETE_ROW_MARKER = 0x08
TAG_ROW_CHECKSUM = 0x09
TAG_CELL_CHECKSUM = 0x0A

VT_INTEGER = 0x0
VT_DOUBLE = 0x1
VT_BOOLEAN = 0x2
VT_STRING = 0x3
VT_NULL = 0x6
VT_BLOB = 0x7
VT_INF_MIN = 0x9
VT_INF_MAX = 0xA
VT_AUTO_INCREMENT = 0xB

OP_DELETE_ALL = 0x1
OP_DELETE_ONE = 0x3
OP_INCREMENT = 0x4


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


INF_MIN = _Sentinel("INF_MIN")
INF_MAX = _Sentinel("INF_MAX")
AUTO_INCREMENT = _Sentinel("AUTO_INCREMENT")

Value = Union[int, float, bool, str, bytes, _Sentinel]  # noqa: UP007 (a runtime alias on 3.10)


class PlainBufferError(ValueError):
    """The buffer is malformed or a checksum does not match."""


def _crc8_table() -> list[int]:
    # CRC-8 with polynomial x^8 + x^2 + x + 1 (0x07), MSB first, as the SDK computes it.
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return table


_CRC8 = _crc8_table()
# Two bytes per step: the per-byte loop dominates the cost of 1-2 MB values.
_CRC8_PAIRS = [_CRC8[_CRC8[hi] ^ lo] for hi in range(256) for lo in range(256)]


def _crc_bytes(crc: int, data: bytes) -> int:
    pairs = _CRC8_PAIRS
    end = len(data) - len(data) % 2
    for i in range(0, end, 2):
        crc = pairs[((crc ^ data[i]) << 8) | data[i + 1]]
    if end != len(data):
        crc = _CRC8[crc ^ data[-1]]
    return crc


def _crc_int8(crc: int, value: int) -> int:
    return _CRC8[crc ^ (value & 0xFF)]


def _crc_int32(crc: int, value: int) -> int:
    return _crc_bytes(crc, struct.pack("<i", value))


def _crc_int64(crc: int, value: int) -> int:
    return _crc_bytes(crc, struct.pack("<q", value))


@dataclass
class Cell:
    """One attribute cell of a request row."""

    name: str
    value: Value | None
    op: int | None = None
    timestamp: int | None = None


@dataclass
class RequestRow:
    """A row as a request carries it: primary key, cells, and the delete marker."""

    primary_key: list[tuple[str, Value]]
    cells: list[Cell] = field(default_factory=list)
    delete_marker: bool = False


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.tag = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise PlainBufferError("unexpected end of PlainBuffer")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def int32(self) -> int:
        return int(struct.unpack("<i", self.take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack("<q", self.take(8))[0])

    def next_tag(self) -> int:
        self.tag = self.byte() if self.pos < len(self.data) else 0
        return self.tag

    def expect(self, tag: int) -> None:
        if self.tag != tag:
            raise PlainBufferError(f"expected tag {tag:#x}, found {self.tag:#x} at {self.pos}")


def _read_typed_value(reader: _Reader, crc: int, *, primary_key: bool) -> tuple[Value, int]:
    kind = reader.byte()
    value: Value
    if kind == VT_INTEGER:
        value = reader.int64()
        crc = _crc_int64(_crc_int8(crc, kind), value)
    elif kind in (VT_STRING, VT_BLOB):
        size = reader.int32()
        raw = reader.take(size)
        crc = _crc_bytes(_crc_int32(_crc_int8(crc, kind), size), raw)
        if kind == VT_STRING:
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PlainBufferError("a STRING value is not valid UTF-8") from exc
        else:
            value = raw
    elif kind == VT_BOOLEAN:
        flag = reader.byte()
        value = bool(flag)
        crc = _crc_int8(_crc_int8(crc, kind), 1 if flag else 0)
    elif kind == VT_DOUBLE and not primary_key:
        bits = reader.int64()
        value = float(struct.unpack("<d", struct.pack("<q", bits))[0])
        crc = _crc_int64(_crc_int8(crc, kind), bits)
    elif kind in (VT_INF_MIN, VT_INF_MAX, VT_AUTO_INCREMENT) and primary_key:
        value = {VT_INF_MIN: INF_MIN, VT_INF_MAX: INF_MAX, VT_AUTO_INCREMENT: AUTO_INCREMENT}[kind]
        crc = _crc_int8(crc, kind)
    else:
        raise PlainBufferError(f"unsupported value type {kind:#x}")
    return value, crc


def _read_cell(reader: _Reader, *, primary_key: bool) -> tuple[Cell, int]:
    reader.next_tag()
    reader.expect(TAG_CELL_NAME)
    name_raw = reader.take(reader.int32())
    crc = _crc_bytes(0, name_raw)
    cell = Cell(name=name_raw.decode("utf-8"), value=None)
    reader.next_tag()
    if reader.tag == TAG_CELL_VALUE:
        size = reader.int32()
        start = reader.pos
        cell.value, crc = _read_typed_value(reader, crc, primary_key=primary_key)
        if reader.pos - start != size:
            raise PlainBufferError(f"cell {cell.name!r}: value length {size} does not match")
        reader.next_tag()
    elif primary_key:
        raise PlainBufferError(f"primary key cell {cell.name!r} has no value")
    if reader.tag == TAG_CELL_TYPE and not primary_key:
        cell.op = reader.byte()
        reader.next_tag()
    if reader.tag == TAG_CELL_TIMESTAMP and not primary_key:
        cell.timestamp = reader.int64()
        crc = _crc_int64(crc, cell.timestamp)
        reader.next_tag()
    if cell.op is not None:
        crc = _crc_int8(crc, cell.op)
    reader.expect(TAG_CELL_CHECKSUM)
    if reader.byte() != crc:
        raise PlainBufferError(f"cell {cell.name!r}: checksum mismatch")
    reader.next_tag()
    return cell, crc


def read_row(data: bytes) -> RequestRow:
    """Decode a request's single row (a row, a row change, or a primary key with bounds).

    Raises:
        PlainBufferError: Malformed buffer or checksum mismatch.
    """
    reader = _Reader(bytes(data))
    if reader.int32() != HEADER:
        raise PlainBufferError("invalid PlainBuffer header")
    reader.next_tag()
    reader.expect(TAG_ROW_PK)
    row = RequestRow(primary_key=[])
    row_crc = 0
    reader.next_tag()
    while reader.tag == TAG_CELL:
        cell, crc = _read_cell(reader, primary_key=True)
        row.primary_key.append((cell.name, cell.value))  # type: ignore[arg-type]
        row_crc = _crc_int8(row_crc, crc)
    if reader.tag == TAG_ROW_DATA:
        reader.next_tag()
        while reader.tag == TAG_CELL:
            cell, crc = _read_cell(reader, primary_key=False)
            row.cells.append(cell)
            row_crc = _crc_int8(row_crc, crc)
    if reader.tag == TAG_DELETE_ROW_MARKER:
        row.delete_marker = True
        reader.next_tag()
    row_crc = _crc_int8(row_crc, 1 if row.delete_marker else 0)
    reader.expect(TAG_ROW_CHECKSUM)
    if reader.byte() != row_crc:
        raise PlainBufferError("row checksum mismatch")
    if reader.pos != len(reader.data):
        raise PlainBufferError("trailing bytes after the row")
    return row


def read_value(data: bytes) -> Value:
    """Decode a bare typed value (a column condition's operand).

    Raises:
        PlainBufferError: Malformed value.
    """
    reader = _Reader(bytes(data))
    value, _ = _read_typed_value(reader, 0, primary_key=False)
    if reader.pos != len(reader.data):
        raise PlainBufferError("trailing bytes after the value")
    return value


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def raw(self, data: bytes) -> None:
        self.parts.append(data)

    def tag(self, tag: int) -> None:
        self.parts.append(bytes((tag,)))

    def value(self, value: Value, crc: int) -> int:
        if isinstance(value, bool):
            payload = struct.pack("<B?", VT_BOOLEAN, value)
            crc = _crc_int8(_crc_int8(crc, VT_BOOLEAN), 1 if value else 0)
        elif isinstance(value, int):
            payload = struct.pack("<Bq", VT_INTEGER, value)
            crc = _crc_int64(_crc_int8(crc, VT_INTEGER), value)
        elif isinstance(value, float):
            bits = struct.unpack("<q", struct.pack("<d", value))[0]
            payload = struct.pack("<Bq", VT_DOUBLE, bits)
            crc = _crc_int64(_crc_int8(crc, VT_DOUBLE), bits)
        elif isinstance(value, (str, bytes)):
            kind = VT_STRING if isinstance(value, str) else VT_BLOB
            raw = value.encode("utf-8") if isinstance(value, str) else value
            payload = struct.pack("<Bi", kind, len(raw)) + raw
            crc = _crc_bytes(_crc_int32(_crc_int8(crc, kind), len(raw)), raw)
        else:
            raise PlainBufferError(f"cannot write {value!r}")
        self.tag(TAG_CELL_VALUE)
        self.raw(struct.pack("<i", len(payload)))
        self.raw(payload)
        return crc

    def cell(self, name: str, value: Value, timestamp: int | None) -> int:
        raw_name = name.encode("utf-8")
        self.tag(TAG_CELL)
        self.tag(TAG_CELL_NAME)
        self.raw(struct.pack("<i", len(raw_name)) + raw_name)
        crc = self.value(value, _crc_bytes(0, raw_name))
        if timestamp is not None:
            self.tag(TAG_CELL_TIMESTAMP)
            self.raw(struct.pack("<q", timestamp))
            crc = _crc_int64(crc, timestamp)
        self.tag(TAG_CELL_CHECKSUM)
        self.tag(crc)
        return crc

    def row(
        self,
        primary_key: list[tuple[str, Value]],
        attributes: list[tuple[str, Value, int]],
    ) -> None:
        row_crc = 0
        self.tag(TAG_ROW_PK)
        for name, value in primary_key:
            row_crc = _crc_int8(row_crc, self.cell(name, value, None))
        if attributes:
            self.tag(TAG_ROW_DATA)
            for name, value, timestamp in attributes:
                row_crc = _crc_int8(row_crc, self.cell(name, value, timestamp))
        self.tag(TAG_ROW_CHECKSUM)
        self.tag(_crc_int8(row_crc, 0))


def write_rows(rows: list[tuple[list[tuple[str, Value]], list[tuple[str, Value, int]]]]) -> bytes:
    """Encode rows (primary key, attributes with timestamps) as one response buffer."""
    if not rows:
        return b""
    writer = _Writer()
    writer.raw(struct.pack("<i", HEADER))
    for primary_key, attributes in rows:
        writer.row(primary_key, attributes)
    return b"".join(writer.parts)


def write_primary_key(primary_key: list[tuple[str, Value]]) -> bytes:
    """Encode a bare primary key (GetRange's ``next_start_primary_key``)."""
    return write_rows([(primary_key, [])])
