"""UpstashChatStore when a connection drops mid-request: every change applied exactly once.

A fault proxy (the testing package's) sits between the store and a real Upstash REST bridge
(over a real redis-server) and cuts one HTTP request: before it reaches the bridge
(DROP_REQUEST) or after the bridge applied it and answered (DROP_REPLY). The conformance
suite cuts every request of every change (``test_a_change_cut_anywhere_applies_once``);
these are the named cases and the options.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.core import BackendUnavailableError, ChatMessage
from llama_index.storage.chat_store.testing.faults import FaultKind, FaultProxy
from llama_index.storage.chat_store.testing.services import free_port
from llama_index.storage.chat_store.upstash import UpstashChatStore
from llama_index.storage.chat_store.upstash.testing import UpstashBridge, start_upstash_bridge


@pytest.fixture(scope="module")
def bridge(redis_url: str) -> Iterator[UpstashBridge]:
    bridge = start_upstash_bridge(redis_url)
    yield bridge
    bridge.stop()


@pytest.fixture
def proxy(bridge: UpstashBridge) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", bridge.port) as proxy:
        yield proxy


def _url(proxy: FaultProxy) -> str:
    return f"http://{proxy.host}:{proxy.port}"


# The LlamaIndex layout (raw keys, no expiry) and a namespaced one with an expiry.
LAYOUTS: dict[str, dict[str, Any]] = {
    "llama_index": {},
    "namespaced": {"namespace": "retries:", "ttl": 600},
}


@pytest.fixture(params=sorted(LAYOUTS))
def store(
    request: pytest.FixtureRequest, bridge: UpstashBridge, proxy: FaultProxy
) -> Iterator[UpstashChatStore]:
    with UpstashChatStore(_url(proxy), bridge.token, **LAYOUTS[request.param]) as store:
        yield store


@pytest.mark.parametrize("rest_retries", [None, 1])
def test_upstash_default_retries_store_an_append_whose_reply_is_lost_once(
    bridge: UpstashBridge, proxy: FaultProxy, rest_retries: int | None
) -> None:
    """The case of issue 15: with the defaults (and with LlamaIndex-era rest_retries=1) an
    add_message whose reply is lost is stored once and the call succeeds.

    If this fails: upstash-redis (or the store) resends the script without its op id being
    checked, storing an acknowledged message twice.
    """
    options = {} if rest_retries is None else {"rest_retries": rest_retries}
    key = f"conv-{uuid.uuid4().hex}"
    with UpstashChatStore(_url(proxy), bridge.token, rest_retry_interval=0, **options) as store:
        store.add_message(key, ChatMessage(content="first"))
        fault = proxy.inject(FaultKind.DROP_REPLY)  # the next request: the call's script
        store.add_message(key, ChatMessage(content="second"))
        assert fault.fired == 1
        assert [m.content for m in store.get_messages(key)] == ["first", "second"]
        store.delete_messages(key)


def test_without_retries_a_lost_reply_says_the_outcome_is_unknown(
    bridge: UpstashBridge, proxy: FaultProxy
) -> None:
    """retries=0: a lost reply raises BackendUnavailableError that does not claim a failure.

    If this fails: the error no longer tells the caller the change may have landed.
    """
    key = f"conv-{uuid.uuid4().hex}"
    with UpstashChatStore(_url(proxy), bridge.token, retries=0) as store:
        proxy.inject(FaultKind.DROP_REPLY)  # the next request: the call's script
        with pytest.raises(BackendUnavailableError, match="outcome is unknown"):
            store.add_message(key, ChatMessage(content="x"))
        assert [m.content for m in store.get_messages(key)] == ["x"]
        store.delete_messages(key)


def test_retries_that_never_reach_the_endpoint_say_nothing_was_applied() -> None:
    """An unreachable endpoint: every attempt fails to connect, so nothing was applied.

    If this fails: a refused connection is reported as an unknown outcome (or not retried).
    """
    store = UpstashChatStore(f"http://127.0.0.1:{free_port()}", "token", retries=2)
    with pytest.raises(BackendUnavailableError, match=r"3 attempt.*nothing was applied"):
        store.add_message("k", ChatMessage(content="x"))
