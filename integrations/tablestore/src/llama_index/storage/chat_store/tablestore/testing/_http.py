r"""The emulator's HTTP front: the SDK's request signing, protobuf bodies and signed responses.

Every API is ``POST /{ApiName}`` with a protobuf body (the SDK's own ``table_store_pb2``
messages). A request must carry ``x-ots-date`` (within 15 minutes), ``x-ots-apiversion``,
``x-ots-accesskeyid``, ``x-ots-instancename``, ``x-ots-contentmd5`` (base64 MD5 of the body,
checked) and ``x-ots-signature`` = base64 HMAC-SHA1 of ``"/Api\\nPOST\\n\\n"`` plus the sorted
``name:value`` ``x-ots-*`` headers, each followed by a newline. Responses carry
``x-ots-contentmd5``, ``x-ots-requestid``, ``x-ots-date``, ``x-ots-contenttype`` and
``Authorization: OTS <id>:<signature>`` over the sorted response ``x-ots-*`` headers then
``"\\n/Api"``, which the client verifies. Errors are an HTTP status plus a protobuf ``Error``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import operator
import socket
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError

import tablestore.protobuf.table_store_filter_pb2 as filter_pb
import tablestore.protobuf.table_store_pb2 as pb
from llama_index.storage.chat_store.tablestore.testing._engine import (
    MAX_BATCH_GET_ROWS,
    MAX_BATCH_WRITE_BYTES,
    MAX_BATCH_WRITE_ROWS,
    Engine,
    OTSError,
    RowFilter,
    StoredRow,
    Table,
    row_size,
)
from llama_index.storage.chat_store.tablestore.testing._plainbuffer import (
    PlainBufferError,
    Value,
    read_row,
    read_value,
    write_primary_key,
    write_rows,
)

__all__ = ["EmulatorServer"]

MAX_BODY_BYTES = 5 * 1024 * 1024
"""An HTTP request body holds at most 5 MB."""
_CLOCK_SKEW = datetime.timedelta(minutes=15)
_TYPES = {pb.INTEGER: "INTEGER", pb.STRING: "STRING", pb.BINARY: "BINARY"}
_TYPE_CODES = {name: code for code, name in _TYPES.items()}


def _sign(secret: str, text: str) -> str:
    digest = hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _ots_headers(headers: dict[str, str]) -> str:
    items = [f"{k.lower()}:{v.strip()}" for k, v in headers.items()]
    return "\n".join(sorted(i for i in items if i.startswith("x-ots-")))


def _consumed(proto: Any, read: int = 0, write: int = 0) -> None:
    proto.capacity_unit.read = read
    proto.capacity_unit.write = write


def _compare(comparator: int, actual: Value, operand: Value) -> bool:
    if type(actual) is not type(operand):
        return bool(comparator == filter_pb.CT_NOT_EQUAL)
    compare: Callable[[Any, Any], Any] | None = {
        filter_pb.CT_EQUAL: operator.eq,
        filter_pb.CT_NOT_EQUAL: operator.ne,
        filter_pb.CT_GREATER_THAN: operator.gt,
        filter_pb.CT_GREATER_EQUAL: operator.ge,
        filter_pb.CT_LESS_THAN: operator.lt,
        filter_pb.CT_LESS_EQUAL: operator.le,
    }.get(comparator)
    if compare is None:
        raise OTSError(400, "OTSParameterInvalid", f"Unsupported comparator: {comparator}.")
    return bool(compare(actual, operand))


def _row_filter(data: bytes) -> RowFilter:
    """Compile a serialized ``Filter`` (single or composite column condition)."""
    proto = filter_pb.Filter()
    proto.ParseFromString(data)
    if proto.type == filter_pb.FT_SINGLE_COLUMN_VALUE:
        single = filter_pb.SingleColumnValueFilter()
        single.ParseFromString(proto.filter)
        name, comparator = single.column_name, single.comparator
        passes_if_missing = not single.filter_if_missing
        operand = None if comparator in (7, 8) else read_value(single.column_value)

        def check(cells: dict[str, tuple[Value, int]]) -> bool:
            if comparator == 7:  # CT_EXIST
                return name in cells
            if comparator == 8:  # CT_NOT_EXIST
                return name not in cells
            if name not in cells:
                return passes_if_missing
            assert operand is not None
            return _compare(comparator, cells[name][0], operand)

        return check
    if proto.type == filter_pb.FT_COMPOSITE_COLUMN_VALUE:
        composite = filter_pb.CompositeColumnValueFilter()
        composite.ParseFromString(proto.filter)
        subs = [_row_filter(sub.SerializeToString()) for sub in composite.sub_filters]
        if composite.combinator == filter_pb.LO_NOT:
            if len(subs) != 1:
                raise OTSError(400, "OTSParameterInvalid", "NOT takes exactly one condition.")
            return lambda cells: not subs[0](cells)
        if composite.combinator == filter_pb.LO_AND:
            return lambda cells: all(sub(cells) for sub in subs)
        return lambda cells: any(sub(cells) for sub in subs)
    raise OTSError(400, "OTSParameterInvalid", f"Unsupported filter type: {proto.type}.")


def _condition(proto: Any) -> tuple[int, RowFilter | None]:
    column = proto.column_condition
    return int(proto.row_existence), (_row_filter(column) if column else None)


def _encode_row(table: Table, row: StoredRow) -> tuple[list[tuple[str, Value]], list[Any]]:
    primary_key = [
        (name, value) for (name, _), value in zip(table.primary_key, row.key, strict=True)
    ]
    attributes = [(name, value, ts) for name, (value, ts) in sorted(row.cells.items())]
    return primary_key, attributes


class _Api:
    """Decode a request, run it on the engine, encode the response."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.handlers: dict[str, Callable[[bytes], Any]] = {
            "CreateTable": self.create_table,
            "ListTable": self.list_table,
            "DescribeTable": self.describe_table,
            "DeleteTable": self.delete_table,
            "PutRow": self.put_row,
            "GetRow": self.get_row,
            "UpdateRow": self.update_row,
            "DeleteRow": self.delete_row,
            "GetRange": self.get_range,
            "BatchGetRow": self.batch_get_row,
            "BatchWriteRow": self.batch_write_row,
        }

    def create_table(self, body: bytes) -> Any:
        req = pb.CreateTableRequest.FromString(body)
        meta = req.table_meta
        columns = []
        for column in meta.primary_key:
            if column.HasField("option"):
                raise OTSError(400, "OTSParameterInvalid", "Auto-increment is not emulated.")
            columns.append((column.name, _TYPES.get(column.type, "?")))
        options = {
            "time_to_live": req.table_options.time_to_live or -1,
            "max_versions": req.table_options.max_versions or 1,
            "deviation": req.table_options.deviation_cell_version_in_sec or 86400,
        }
        unit = req.reserved_throughput.capacity_unit
        self.engine.create_table(meta.table_name, columns, options, (unit.read, unit.write))
        return pb.CreateTableResponse()

    def list_table(self, body: bytes) -> Any:
        pb.ListTableRequest.FromString(body)
        return pb.ListTableResponse(table_names=self.engine.list_tables())

    def describe_table(self, body: bytes) -> Any:
        req = pb.DescribeTableRequest.FromString(body)
        with self.engine.lock:
            table = self.engine.table(req.table_name)
        res = pb.DescribeTableResponse()
        res.table_meta.table_name = table.name
        for name, kind in table.primary_key:
            res.table_meta.primary_key.add(name=name, type=_TYPE_CODES[kind])
        details = res.reserved_throughput_details
        details.capacity_unit.read, details.capacity_unit.write = table.reserved
        details.last_increase_time = table.created
        res.table_options.time_to_live = table.options["time_to_live"]
        res.table_options.max_versions = table.options["max_versions"]
        res.table_options.deviation_cell_version_in_sec = table.options["deviation"]
        res.table_options.allow_update = True
        return res

    def delete_table(self, body: bytes) -> Any:
        req = pb.DeleteTableRequest.FromString(body)
        self.engine.delete_table(req.table_name)
        return pb.DeleteTableResponse()

    def _returned_pk(self, table_name: str, key: tuple[Value, ...], proto: Any) -> bytes:
        if proto.return_content.return_type != pb.RT_PK:
            return b""
        table = self.engine.table(table_name)
        return write_primary_key([(n, v) for (n, _), v in zip(table.primary_key, key, strict=True)])

    def put_row(self, body: bytes) -> Any:
        req = pb.PutRowRequest.FromString(body)
        key = self.engine.put_row(req.table_name, read_row(req.row), *_condition(req.condition))
        res = pb.PutRowResponse(row=self._returned_pk(req.table_name, key, req))
        _consumed(res.consumed, write=1)
        return res

    def update_row(self, body: bytes) -> Any:
        req = pb.UpdateRowRequest.FromString(body)
        row = read_row(req.row_change)
        key = self.engine.update_row(req.table_name, row, *_condition(req.condition))
        res = pb.UpdateRowResponse(row=self._returned_pk(req.table_name, key, req))
        _consumed(res.consumed, write=1)
        return res

    def delete_row(self, body: bytes) -> Any:
        req = pb.DeleteRowRequest.FromString(body)
        row = read_row(req.primary_key)
        if not row.delete_marker:
            raise OTSError(400, "OTSParameterInvalid", "DeleteRow needs the delete marker.")
        key = self.engine.delete_row(req.table_name, row, *_condition(req.condition))
        res = pb.DeleteRowResponse(row=self._returned_pk(req.table_name, key, req))
        _consumed(res.consumed, write=1)
        return res

    def get_row(self, body: bytes) -> Any:
        req = pb.GetRowRequest.FromString(body)
        columns = list(req.columns_to_get)
        stored = self.engine.get_row(req.table_name, read_row(req.primary_key).primary_key, columns)
        if stored is not None and req.filter and not _row_filter(req.filter)(stored.cells):
            stored = None
        table = self.engine.table(req.table_name)
        res = pb.GetRowResponse(row=write_rows([_encode_row(table, stored)]) if stored else b"")
        _consumed(res.consumed, read=1)
        return res

    def get_range(self, body: bytes) -> Any:
        req = pb.GetRangeRequest.FromString(body)
        rows, next_key = self.engine.get_range(
            req.table_name,
            req.direction == pb.BACKWARD,
            read_row(req.inclusive_start_primary_key).primary_key,
            read_row(req.exclusive_end_primary_key).primary_key,
            list(req.columns_to_get),
            req.limit if req.HasField("limit") else None,
            _row_filter(req.filter) if req.filter else None,
        )
        table = self.engine.table(req.table_name)
        res = pb.GetRangeResponse(rows=write_rows([_encode_row(table, r) for r in rows]))
        if next_key is not None:
            res.next_start_primary_key = write_primary_key(
                [(n, v) for (n, _), v in zip(table.primary_key, next_key, strict=True)]
            )
        _consumed(res.consumed, read=max(1, len(rows)))
        return res

    def batch_get_row(self, body: bytes) -> Any:
        req = pb.BatchGetRowRequest.FromString(body)
        keys = [[read_row(key).primary_key for key in t.primary_key] for t in req.tables]
        count = sum(len(k) for k in keys)
        if count > MAX_BATCH_GET_ROWS:
            limit = MAX_BATCH_GET_ROWS
            raise OTSError(
                400, "OTSParameterInvalid", f"Rows count exceeds the upper limit: {limit}."
            )
        names = [t.table_name for t in req.tables]
        if len(set(names)) != len(names) or any(not k for k in keys):
            raise OTSError(400, "OTSParameterInvalid", "Duplicated or empty table in request.")
        # The whole request fails on a missing table or a bad primary key (no row is read).
        tables = [self.engine.table(name) for name in names]
        for table, table_keys in zip(tables, keys, strict=True):
            checked = [table.check_key(key) for key in table_keys]
            if len(set(checked)) != len(checked):
                raise OTSError(
                    400, "OTSParameterInvalid", f"Duplicated primary key in '{table.name}'."
                )
        res = pb.BatchGetRowResponse()
        for table_req, table, table_keys in zip(req.tables, tables, keys, strict=True):
            table_res = res.tables.add(table_name=table.name)
            row_filter = _row_filter(table_req.filter) if table_req.filter else None
            for key in table_keys:
                # Each row is read on its own (atomically), not the batch as one snapshot.
                stored = self.engine.get_row(table.name, key, list(table_req.columns_to_get))
                if stored is not None and row_filter and not row_filter(stored.cells):
                    stored = None
                row_res = table_res.rows.add(is_ok=True)
                row_res.row = write_rows([_encode_row(table, stored)]) if stored else b""
                _consumed(row_res.consumed, read=1)
        return res

    def batch_write_row(self, body: bytes) -> Any:
        req = pb.BatchWriteRowRequest.FromString(body)
        decoded = [[(item, read_row(item.row_change)) for item in t.rows] for t in req.tables]
        count = sum(len(rows) for rows in decoded)
        if count > MAX_BATCH_WRITE_ROWS:
            limit = MAX_BATCH_WRITE_ROWS
            raise OTSError(
                400, "OTSParameterInvalid", f"Rows count exceeds the upper limit: {limit}."
            )
        if count == 0:
            raise OTSError(400, "OTSParameterInvalid", "No row specified in the request.")
        size = sum(
            row_size(tuple(v for _, v in row.primary_key),
                     {c.name: (c.value, 0) for c in row.cells if c.value is not None})
            for rows in decoded for _, row in rows
        )  # fmt: skip
        if size > MAX_BATCH_WRITE_BYTES:
            limit = MAX_BATCH_WRITE_BYTES
            raise OTSError(
                400, "OTSParameterInvalid", f"Data size exceeds the upper limit: {limit}."
            )
        for table_req, rows in zip(req.tables, decoded, strict=True):
            keys = [tuple(v for _, v in row.primary_key) for _, row in rows]
            if len(set(keys)) != len(keys):
                name = table_req.table_name
                raise OTSError(400, "OTSParameterInvalid", f"Duplicated primary key in '{name}'.")
        res = pb.BatchWriteRowResponse()
        operations = {pb.PUT: self.engine.put_row, pb.UPDATE: self.engine.update_row,
                      pb.DELETE: self.engine.delete_row}  # fmt: skip
        for table_req, rows in zip(req.tables, decoded, strict=True):
            table_res = res.tables.add(table_name=table_req.table_name)
            for item, row in rows:
                row_res = table_res.rows.add()
                operation = operations[item.type]
                try:
                    key = operation(table_req.table_name, row, *_condition(item.condition))
                except OTSError as exc:
                    row_res.is_ok = False
                    row_res.error.code = exc.code
                    row_res.error.message = exc.message
                    continue
                row_res.is_ok = True
                row_res.row = self._returned_pk(table_req.table_name, key, item)
                _consumed(row_res.consumed, write=1)
        return res


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: a test run has no use for an access log."""

    def do_POST(self) -> None:
        api = self.path.lstrip("/")
        request_id = uuid.uuid4().hex
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if length > MAX_BODY_BYTES:
                self.rfile.read(length)
                raise OTSError(400, "OTSParameterInvalid", "Request body is too large.")
            body = self.rfile.read(length)
            self._authenticate(api, body)
            handler = self.server.api.handlers.get(api)
            if handler is None:
                raise OTSError(400, "OTSUnsupportOperation", f"Unsupported operation: '{api}'.")
            try:
                message = handler(body)
            except (DecodeError, PlainBufferError, UnicodeDecodeError) as exc:
                raise OTSError(400, "OTSParameterInvalid", f"Invalid request body: {exc}") from exc
            self._reply(api, 200, message.SerializeToString(), request_id, sign=True)
        except OTSError as exc:
            error = pb.Error(code=exc.code, message=exc.message).SerializeToString()
            # The client cannot verify a signature made with a secret it does not share.
            self._reply(api, exc.status, error, request_id, sign=exc.code != "OTSAuthFailed")

    def _authenticate(self, api: str, body: bytes) -> None:
        emulator = self.server
        headers = {k.lower(): v for k, v in self.headers.items()}
        for name in ("x-ots-date", "x-ots-apiversion", "x-ots-accesskeyid",
                     "x-ots-instancename", "x-ots-contentmd5", "x-ots-signature"):  # fmt: skip
            if name not in headers:
                raise OTSError(403, "OTSAuthFailed", f"Missing header: '{name}'.")
        if headers["x-ots-accesskeyid"] != emulator.access_key_id:
            raise OTSError(403, "OTSAuthFailed", "The AccessKeyID does not exist.")
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode("ascii")  # noqa: S324 (protocol)
        if md5 != headers["x-ots-contentmd5"]:
            raise OTSError(403, "OTSAuthFailed", "Mismatch between MD5 value of request body "
                           "and x-ots-contentmd5 in header.")  # fmt: skip
        signed = {k: v for k, v in headers.items() if k != "x-ots-signature"}
        expected = _sign(emulator.access_key_secret, f"/{api}\nPOST\n\n{_ots_headers(signed)}\n")
        if not hmac.compare_digest(expected, headers["x-ots-signature"]):
            raise OTSError(403, "OTSAuthFailed", "Signature mismatch.")
        try:
            sent = datetime.datetime.strptime(headers["x-ots-date"], "%Y-%m-%dT%H:%M:%S.%fZ")
        except ValueError:
            raise OTSError(403, "OTSAuthFailed", "Invalid date format in header.") from None
        if abs(sent - datetime.datetime.utcnow()) > _CLOCK_SKEW:
            raise OTSError(403, "OTSAuthFailed", "Mismatch between system time and x-ots-date.")
        if headers["x-ots-instancename"] != emulator.instance_name:
            raise OTSError(403, "OTSAuthFailed", "The instance is not found.")

    def _reply(self, api: str, status: int, body: bytes, request_id: str, *, sign: bool) -> None:
        headers = {
            "x-ots-contentmd5": base64.b64encode(hashlib.md5(body).digest()).decode("ascii"),  # noqa: S324
            "x-ots-requestid": request_id,
            "x-ots-date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "x-ots-contenttype": "protocol buffer",
        }
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if sign:
            signature = _sign(self.server.access_key_secret, f"{_ots_headers(headers)}\n/{api}")
            self.send_header("Authorization", f"OTS {self.server.access_key_id}:{signature}")
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, emulator: EmulatorServer) -> None:
        self.api = emulator.api
        self.access_key_id = emulator.access_key_id
        self.access_key_secret = emulator.access_key_secret
        self.instance_name = emulator.instance_name
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections, self.connections = self.connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


class EmulatorServer:
    """One emulated instance served on a loopback port; the data outlives stop/start."""

    def __init__(
        self, port: int, instance_name: str, access_key_id: str, access_key_secret: str
    ) -> None:
        self.port = port
        self.instance_name = instance_name
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.engine = Engine()
        self.api = _Api(self.engine)
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the server accepts connections."""
        return self._http is not None

    def start(self) -> None:
        """Listen on the port (again) and serve in a daemon thread."""
        if self._http is not None:
            return
        self._http = _HTTPServer(self.port, self)
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"tablestore-emulator-{self.port}", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut open connections, as a crashed server would."""
        http, self._http = self._http, None
        if http is None:
            return
        http.shutdown()
        http.server_close()
        http.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
