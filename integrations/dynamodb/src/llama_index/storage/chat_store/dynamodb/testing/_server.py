"""A real moto server speaking DynamoDB's HTTP API on a free loopback port, and a fault proxy.

moto runs as a server, never in-process: the store under test talks HTTP to it
through the real boto3 stack (signing, retries, error parsing). It needs ``moto[server]`` in
the test environment. :func:`serve_moto` runs moto's own application with two corrections
that bring it closer to DynamoDB, checked against moto 5.2:

* moto's server handles requests on concurrent threads without a lock, so its conditional
  writes and transactions are check-then-write races that DynamoDB does not have; here
  requests are applied one at a time, which makes each one atomic as DynamoDB's are;
* moto deep-copies every table a TransactWriteItems touches, once per action, to be able to
  roll back, so a transaction costs O(table size) instead of O(1) and benchmarks on moto
  would show it; here a transaction's conditions are checked first (requests are atomic, see
  above) and moto runs it without the copies only when all of them hold, so there is nothing
  to roll back. Cancellation reasons are reported as moto reports them.

:class:`DynamoDBFaultProxy` sits between a store and the server and answers chosen requests
with DynamoDB's real throttling error, so boto3's own retry logic runs against it.
"""

from __future__ import annotations

import http.client
import http.server
import importlib.util
import threading
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from llama_index.storage.chat_store.testing.services import (
    LocalServer,
    ServiceUnavailableError,
    docker_container,
    local,
    service_fixture,
    start_python_server,
)

HOW_TO = (
    "install moto's server into the test environment (pip install "
    "'llama-index-storage-chat-store-dynamodb[testing]', which brings moto[server]), or set "
    "CHAT_STORE_TEST_DYNAMODB_URL=http://host:port to a disposable moto server or DynamoDB Local"
)


def moto_ping(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether a moto server answers HTTP on the port."""
    try:
        with urllib.request.urlopen(
            f"http://{host}:{port}/moto-api/data.json", timeout=1
        ) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def moto_reset(url: str) -> None:
    """Remove every table and item from the moto server at ``url`` (``POST /moto-api/reset``)."""
    request = urllib.request.Request(f"{url.rstrip('/')}/moto-api/reset", method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310
        pass


def start_moto() -> LocalServer:
    """Start moto's server on a free port (in-memory: a restart starts empty).

    Raises:
        ServiceUnavailableError: moto[server] is not installed or the server did not start.
    """
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise ServiceUnavailableError("moto[server] is not installed in this environment")

    return start_python_server("moto-server", __package__, ready=moto_ping)


def _moto_image() -> Any:
    from testcontainers.core.container import DockerContainer

    return DockerContainer("motoserver/moto:latest").with_exposed_ports(5000)


dynamodb_url = service_fixture(
    "dynamodb_url", "DynamoDB (moto)", "CHAT_STORE_TEST_DYNAMODB_URL",
    local(start_moto, lambda s: f"http://127.0.0.1:{s.port}"),
    docker_container(
        _moto_image, lambda c: f"http://{c.get_container_host_ip()}:{c.get_exposed_port(5000)}"
    ),
    HOW_TO,
    doc="The endpoint URL of a real moto server for this test session (disposable).",
)  # fmt: skip


_THROTTLED = (
    b'{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",'
    b'"message":"The level of configured provisioned throughput for the table was exceeded."}'
)


class DynamoDBFaultProxy:
    """An HTTP proxy in front of a DynamoDB endpoint that can throttle requests.

    Every request is forwarded unchanged (the signature stays valid: the proxy's own URL is
    what the client signs for), except while :attr:`throttle` is positive: then the request
    is answered with HTTP 400 ``ProvisionedThroughputExceededException`` exactly as DynamoDB
    does, and the counter goes down by one. A negative value throttles forever.

    Args:
        target: The endpoint URL of the real server.
    """

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.throttle = 0
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if proxy._take_throttle():
                    self._reply(400, {"Content-Type": "application/x-amz-json-1.0"}, _THROTTLED)
                    return
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                self._reply(status, headers, data)

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _take_throttle(self) -> bool:
        with self._lock:
            self.requests += 1
            if self.throttle == 0:
                return False
            if self.throttle > 0:
                self.throttle -= 1
            return True

    def _forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self._target, timeout=60)
        try:
            skip = {"content-length", "connection", "transfer-encoding"}
            sent = {k: v for k, v in headers.items() if k.lower() not in skip}
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
            kept = {
                k: v
                for k, v in response.getheaders()
                if k.lower() not in {"content-length", "connection", "transfer-encoding"}
            }
            return response.status, kept, data
        finally:
            connection.close()

    def close(self) -> None:
        """Stop the proxy."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> DynamoDBFaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve_moto(port: int, host: str = "127.0.0.1") -> None:
    """Serve moto's DynamoDB (and other) APIs on ``host:port``, one request at a time."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    _transactions_without_table_copies()
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def atomic(environ: Any, start_response: Any) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    run_simple(host, port, atomic, threaded=True, request_handler=MotoRequestHandler)


def _transactions_without_table_copies() -> None:
    import moto.dynamodb.models as models
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import TransactionCanceledException

    original = models.DynamoDBBackend.transact_write_items

    class _NoCopy:
        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        reasons: list[tuple[str | None, str | None, Any]] = []
        for entry in transact_items:
            if len(entry) != 1:
                return original(self, transact_items)  # moto reports the malformed request
            ((kind, op),) = entry.items()
            if kind not in {"ConditionCheck", "Put", "Delete", "Update"}:
                return original(self, transact_items)
            table = self.get_table(op["TableName"])
            if kind == "Put":
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            condition = op.get("ConditionExpression")
            passed = condition is None or get_filter_expression(
                condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            ).expr(self.get_item(op["TableName"], key))
            reasons.append(
                (None, None, None) if passed
                else ("ConditionalCheckFailed", "The conditional request failed", None)
            )  # fmt: skip
        if any(code for code, _, _ in reasons):
            raise TransactionCanceledException(reasons)
        saved = getattr(models, "copy")  # noqa: B009 (not an exported name of moto)
        setattr(models, "copy", _NoCopy)  # noqa: B010
        try:
            return original(self, transact_items)
        finally:
            setattr(models, "copy", saved)  # noqa: B010

    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
