"""Credentials, a server killed and restarted, unix sockets, and data that is not ours.

Uses a redis-server of its own (password-protected, with a unix socket) so it can stop it.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendUnavailableError,
    ChatMessage,
    ConfigurationError,
    CorruptDataError,
)
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.redis.testing import start_redis
from llama_index.storage.chat_store.testing.services import LocalServer

PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    # A short path: unix socket paths are limited to ~100 bytes.
    with tempfile.TemporaryDirectory(prefix="rcs-") as path:
        yield Path(path)


@pytest.fixture(scope="module")
def server(socket_dir: Path) -> Iterator[LocalServer]:
    server = start_redis("--requirepass", PASSWORD, "--unixsocket", str(socket_dir / "redis.sock"))
    yield server
    server.cleanup()


@pytest.fixture
def url(server: LocalServer) -> Iterator[str]:
    server.start()  # a test may have stopped it
    yield f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    with redis.Redis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0") as raw:
        raw.flushdb()


def test_password_never_shows(url: str) -> None:
    store = RedisChatStore(redis_url=url, namespace="app:")
    shown = [repr(store), str(store), str(store.to_dict()), store.model_dump_json()]
    assert not [text for text in shown if PASSWORD in text]
    assert store.to_dict()["redis_url"].startswith("redis://127.0.0.1:")
    store.add_message("k", ChatMessage(content="x"))
    rebuilt = RedisChatStore.from_dict(store.to_dict(), password=PASSWORD)
    assert rebuilt.count_messages("k") == 1


def test_wrong_or_missing_password_is_an_authentication_error(url: str) -> None:
    wrong = RedisChatStore(redis_url=url.replace(PASSWORD, "nope"))
    missing = RedisChatStore(redis_url=url.replace(f":{PASSWORD}@", ""))
    for store in (wrong, missing):
        with pytest.raises(AuthenticationError):
            store.get_messages("k")
        with pytest.raises(AuthenticationError):
            asyncio.run(store.aadd_message("k", ChatMessage(content="x")))
    with pytest.raises(AuthenticationError) as info:
        wrong.add_message("k", ChatMessage(content="x"))
    assert "nope" not in str(info.value)
    assert ":***@127.0.0.1" in str(info.value)


def test_server_killed_mid_run_then_back(server: LocalServer, url: str) -> None:
    store = RedisChatStore(redis_url=url, namespace="app:")
    store.add_message("k", ChatMessage(content="before"))
    asyncio.run(store.aadd_message("k", ChatMessage(content="before, async")))
    server.stop()
    with pytest.raises(BackendUnavailableError) as info:
        store.add_message("k", ChatMessage(content="lost"))
    assert PASSWORD not in str(info.value)
    assert f"127.0.0.1:{server.port}" in str(info.value)
    with pytest.raises(BackendUnavailableError):
        store.get_keys()

    async def while_down() -> None:
        with pytest.raises(BackendUnavailableError):
            await store.aget_messages("k")

    asyncio.run(while_down())
    server.start()  # no persistence: the data is gone, the store works again
    store.add_message("k", ChatMessage(content="after"))
    assert [m.content for m in store.get_messages("k")] == ["after"]
    assert asyncio.run(store.acount_messages("k")) == 1
    assert store.get_keys() == ["k"]


def test_connection_the_server_closed_while_idle_is_reopened(url: str) -> None:
    store = RedisChatStore(redis_url=url, namespace="app:")
    store.add_message("k", ChatMessage(content="one"))
    with redis.Redis.from_url(url) as admin:
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    time.sleep(0.6)  # idle long enough that the store polls the connection before using it
    store.add_message("k", ChatMessage(content="two"))
    assert [m.content for m in store.get_messages("k")] == ["one", "two"]


def test_a_timed_out_exchange_never_leaves_its_reply_behind(url: str) -> None:
    store = RedisChatStore.from_url(url + "?socket_timeout=0.1", namespace="app:", retries=0)
    store.add_messages("k", [ChatMessage(content="a"), ChatMessage(content="b")])

    blocker = threading.Thread(target=_block_the_server, args=(url,))
    blocker.start()
    time.sleep(0.05)
    with pytest.raises(BackendUnavailableError):
        store.count_messages("k")  # answered after the timeout, on a connection we dropped
    blocker.join()
    assert [m.content for m in store.get_messages("k")] == ["a", "b"]
    assert store.count_messages("k") == 2


def test_async_connection_the_server_closed_while_idle_is_reopened(url: str) -> None:
    store = RedisChatStore(redis_url=url, namespace="app:")

    async def scenario() -> None:
        await store.aadd_message("k", ChatMessage(content="one"))
        with redis.Redis.from_url(url) as admin:
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        await asyncio.sleep(0.6)
        await store.aadd_message("k", ChatMessage(content="two"))
        assert [m.content for m in await store.aget_messages("k")] == ["one", "two"]
        await store.aclose()

    asyncio.run(scenario())


def test_a_cancelled_async_call_never_leaves_its_reply_behind(url: str) -> None:
    store = RedisChatStore(redis_url=url, namespace="app:")

    async def scenario() -> None:
        await store.aadd_messages("k", [ChatMessage(content="a"), ChatMessage(content="b")])
        blocker = asyncio.create_task(asyncio.to_thread(_block_the_server, url))
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):  # cancelled while waiting for the reply
            await asyncio.wait_for(store.acount_messages("k"), timeout=0.1)
        await blocker
        assert [m.content for m in await store.aget_messages("k")] == ["a", "b"]
        assert await store.acount_messages("k") == 2

    asyncio.run(scenario())


def _block_the_server(url: str) -> None:  # a busy script holds the server for about 0.4 s
    with redis.Redis.from_url(url) as other:
        other.eval(_BUSY_SCRIPT, 0, 400_000)


_BUSY_SCRIPT = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
"""


def test_unix_socket_url(url: str, socket_dir: Path) -> None:
    socket_url = f"unix://:{PASSWORD}@{socket_dir / 'redis.sock'}?db=0&namespace=sock:&ttl=60"
    store = RedisChatStore.from_url(socket_url)
    assert (store.namespace, store.ttl) == ("sock:", 60)
    assert PASSWORD not in store.redis_url
    store.add_message("k", ChatMessage(content="via socket"))
    assert asyncio.run(store.aget_messages("k"))[0].content == "via socket"
    with RedisChatStore(redis_url=url) as tcp:
        assert tcp.count_messages("sock:k") == 1


def test_non_list_value_is_corrupt_and_left_alone(url: str) -> None:
    store = RedisChatStore(redis_url=url)
    with redis.Redis.from_url(url) as raw:
        raw.set("session", "some other app's value")
        calls = [
            lambda: store.get_messages("session"),
            lambda: store.count_messages("session"),
            lambda: store.add_message("session", ChatMessage(content="x")),
            lambda: store.add_message("session", ChatMessage(content="x"), idx=0),
            lambda: store.set_messages("session", [ChatMessage(content="x")]),
            lambda: store.delete_messages("session"),
            lambda: store.delete_message("session", 0),
            lambda: store.delete_last_message("session"),
            lambda: store.delete_oldest_messages("session", 1),
            lambda: asyncio.run(store.aget_messages("session")),
        ]
        for call in calls:
            with pytest.raises(CorruptDataError, match="'session'"):
                call()
        assert raw.get("session") == b"some other app's value"


def test_corrupt_element_names_key_and_position(url: str) -> None:
    store = RedisChatStore(redis_url=url)
    store.add_messages("k", [ChatMessage(content="ok"), ChatMessage(content="ok too")])
    with redis.Redis.from_url(url) as raw:
        raw.lset("k", 1, "{not json")
    with pytest.raises(CorruptDataError, match=r"'k' position 1"):
        store.get_messages("k")
    with pytest.raises(CorruptDataError, match=r"'k' position -1"):  # counted from the end
        store.get_messages("k", offset=-1)
    assert [m.content for m in store.get_messages("k", limit=1)] == ["ok"]
    with pytest.raises(CorruptDataError, match=r"'k' position 1.*removed"):
        store.delete_last_message("k")
    assert store.count_messages("k") == 1


def test_configuration_errors_come_before_any_connection() -> None:
    with pytest.raises(ConfigurationError, match="hash tag"):
        RedisChatStore(redis_url="redis://127.0.0.1:1", cluster=True, namespace="app{:")
    with pytest.raises(ConfigurationError, match="redis://"):
        RedisChatStore(redis_url="http://127.0.0.1:1")
    store = RedisChatStore.from_url("rediss://user:pw@example.invalid:6380/2?ttl=5&cluster=true"
                                    "&namespace=%7Bapp%7D:&ssl_cert_reqs=none")  # fmt: skip
    assert (store.ttl, store.cluster, store.namespace) == (5, True, "{app}:")
    assert store.redis_url == "rediss://user@example.invalid:6380/2?ssl_cert_reqs=none"
    assert store.password is not None
    assert store.password.get_secret_value() == "pw"


REMOVALS = {
    "delete_messages": lambda s: s.delete_messages("k"),
    "delete_message": lambda s: s.delete_message("k", 1),
    "delete_oldest_messages": lambda s: s.delete_oldest_messages("k", 2),
    "adelete_messages": lambda s: asyncio.run(s.adelete_messages("k")),
}


@pytest.mark.parametrize("bad", [b"{not json", b"\xff\xfe not UTF-8"])
@pytest.mark.parametrize("removal", sorted(REMOVALS))
def test_a_removal_of_corrupt_data_removes_it_and_names_key_position_and_data(
    url: str, removal: str, bad: bytes
) -> None:
    """The Redis-family rule: a removal removes what it was asked to, corrupt or not, then
    raises CorruptDataError naming the key and the first unreadable position, data attached."""
    store = RedisChatStore(redis_url=url, namespace="removal:")
    store.add_messages("k", [ChatMessage(content=c) for c in "abc"])
    with redis.Redis.from_url(url) as raw:
        raw.lset("removal:k", 1, bad)
        with pytest.raises(CorruptDataError, match="removed") as info:
            REMOVALS[removal](store)
        assert (info.value.key, info.value.position, info.value.data) == ("k", 1, bad)
        left = 0 if removal.endswith("delete_messages") else 1 if "oldest" in removal else 2
        assert raw.llen("removal:k") == left
    assert store.count_messages("k") == left
    assert ("k" in store.get_keys()) == bool(left)


@pytest.mark.parametrize("port", ["99999", "abc", "-1"])
def test_a_bad_port_is_a_configuration_error_with_the_password_masked(port: str) -> None:
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    for build in (lambda: RedisChatStore(redis_url=url), lambda: RedisChatStore.from_url(url)):
        with pytest.raises(ConfigurationError, match="invalid port") as info:
            build()
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "hunter2" not in str(info.value)
