"""The Upstash REST bridge speaks the protocol faithfully (checked at the HTTP level)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.upstash.testing import UpstashBridge, start_upstash_bridge
from llama_index.storage.chat_store.upstash.testing._server import UNAUTHORIZED


@pytest.fixture
def bridge(redis_url: str) -> Iterator[UpstashBridge]:
    bridge = start_upstash_bridge(redis_url)
    yield bridge
    bridge.stop()


def _post(
    bridge: UpstashBridge,
    body: Any,
    path: str = "",
    *,
    token: str | None = "",
    b64: bool = False,
    method: str = "POST",
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token or bridge.token}"
    if b64:
        headers["Upstash-Encoding"] = "base64"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(bridge.url + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_bearer_token_is_required_everywhere(bridge: UpstashBridge) -> None:
    for path, body in (("", ["PING"]), ("/pipeline", [["PING"]]), ("/multi-exec", [["PING"]])):
        for token in (None, "wrong"):
            assert _post(bridge, body, path, token=token) == (401, {"error": UNAUTHORIZED})
    assert _post(bridge, ["PING"]) == (200, {"result": "PONG"})


def test_single_commands_and_error_shape(bridge: UpstashBridge) -> None:
    _post(bridge, ["DEL", "u:list", "u:s"])  # what another test of this server left
    assert _post(bridge, ["DEL", "u:list", "u:s"]) == (200, {"result": 0})
    assert _post(bridge, ["RPUSH", "u:list", "a", 2, 1.5]) == (200, {"result": 3})
    assert _post(bridge, ["LRANGE", "u:list", 0, -1]) == (200, {"result": ["a", "2", "1.5"]})
    assert _post(bridge, ["GET", "missing"]) == (200, {"result": None})
    status, reply = _post(bridge, ["GET", "u:list"])
    assert status == 400
    assert reply["error"].startswith("WRONGTYPE")
    status, reply = _post(bridge, ["NOSUCHCOMMAND"])
    assert status == 400
    assert reply["error"].startswith("ERR unknown command")
    status, reply = _post(bridge, {"not": "a command"})
    assert status == 400
    assert reply["error"].startswith("ERR")


def test_base64_mode_encodes_bulk_strings_not_integers_nulls_or_ok(bridge: UpstashBridge) -> None:
    assert _post(bridge, ["SET", "u:s", "héllo"], b64=True) == (200, {"result": "OK"})
    assert _post(bridge, ["GET", "u:s"], b64=True) == (200, {"result": _b64("héllo")})
    assert _post(bridge, ["PING"], b64=True) == (200, {"result": _b64("PONG")})
    reply = _post(bridge, ["EVAL", "return {1, 'two', false, {'x'}}", 0], b64=True)
    assert reply == (200, {"result": [1, _b64("two"), None, [_b64("x")]]})
    assert _post(bridge, ["GET", "u:s"]) == (200, {"result": "héllo"})


def test_pipeline_runs_each_command_not_atomically(bridge: UpstashBridge) -> None:
    _post(bridge, ["DEL", "u:n", "u:s"])
    _post(bridge, ["SET", "u:s", "x"])
    status, replies = _post(bridge, [["INCR", "u:n"], ["LPUSH", "u:s", "y"], ["INCR", "u:n"]],
                            "/pipeline")  # fmt: skip
    assert status == 200
    assert replies[0] == {"result": 1}
    assert replies[1]["error"].startswith("WRONGTYPE")
    assert replies[2] == {"result": 2}


def test_multi_exec_is_atomic(bridge: UpstashBridge) -> None:
    _post(bridge, ["DEL", "u:n"])
    status, replies = _post(bridge, [["INCR", "u:n"], ["INCR", "u:n"]], "/multi-exec", b64=True)
    assert (status, replies) == (200, [{"result": 1}, {"result": 2}])
    # A command Redis refuses while queueing discards the whole transaction.
    status, reply = _post(bridge, [["INCR", "u:n"], ["INCR"]], "/multi-exec")
    assert status == 400
    assert reply["error"].startswith("EXECABORT")
    assert _post(bridge, ["GET", "u:n"]) == (200, {"result": "2"})


def test_path_form(bridge: UpstashBridge) -> None:
    assert _post(bridge, None, "/set/u:p/v%20w", method="GET") == (200, {"result": "OK"})
    assert _post(bridge, None, "/get/u:p", method="GET") == (200, {"result": "v w"})


def test_listens_on_loopback_and_restarts_on_its_port(bridge: UpstashBridge) -> None:
    assert bridge.url.startswith("http://127.0.0.1:")
    port = bridge.port
    bridge.stop()
    with pytest.raises(urllib.error.URLError):
        _post(bridge, ["PING"])
    bridge.start()
    assert bridge.port == port
    assert _post(bridge, ["PING"]) == (200, {"result": "PONG"})
