"""Faults against real servers: throttling through a proxy, a moto server killed and restarted,
and every request of the large-change paths cut (the suite cuts the small ones)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llama_index.storage.chat_store.core import BackendUnavailableError, ChatMessage
from llama_index.storage.chat_store.dynamodb import DynamoDBChatStore
from llama_index.storage.chat_store.dynamodb.testing import DynamoDBFaultProxy, start_moto
from llama_index.storage.chat_store.testing import numbered
from llama_index.storage.chat_store.testing.faults import FaultKind, FaultProxy, address_of
from llama_index.storage.chat_store.testing.services import LocalServer


@pytest.fixture
def proxy(moto: Any) -> Iterator[DynamoDBFaultProxy]:
    with DynamoDBFaultProxy(moto.url) as proxy:
        yield proxy


def test_throttling_is_retried_with_backoff(moto: Any, proxy: DynamoDBFaultProxy) -> None:
    store = moto.store("native", endpoint_url=proxy.url, max_retries=5)
    proxy.throttle = 3
    store.add_message("k", ChatMessage(content="x"))
    assert proxy.throttle == 0  # three refusals were retried by botocore, then it went through
    assert store.count_messages("k") == 1


def test_lasting_throttling_becomes_backend_unavailable(
    moto: Any, proxy: DynamoDBFaultProxy
) -> None:
    store = moto.store("native", endpoint_url=proxy.url, max_retries=2)
    store.add_message("k", ChatMessage(content="x"))
    proxy.throttle = -1
    with pytest.raises(BackendUnavailableError, match="ProvisionedThroughputExceeded") as info:
        store.get_messages("k")
    assert info.value.__cause__ is not None
    with pytest.raises(BackendUnavailableError):
        asyncio.run(store.aadd_message("k", ChatMessage(content="y")))
    proxy.throttle = 0
    assert store.count_messages("k") == 1


@pytest.fixture
def own_server() -> Iterator[LocalServer]:
    server = start_moto()
    yield server
    server.cleanup()


def test_server_down_then_back(own_server: LocalServer, moto: Any) -> None:
    url = f"http://127.0.0.1:{own_server.port}"
    store = DynamoDBChatStore(
        table_name="chat", endpoint_url=url, max_retries=1, timeout=2, **moto.credentials
    )
    store.create_table()
    store.add_message("k", ChatMessage(content="before"))
    own_server.stop()
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{own_server.port}"):
        store.get_messages("k")
    with pytest.raises(BackendUnavailableError):
        store.add_message("k", ChatMessage(content="lost"))
    own_server.start()  # moto keeps nothing across a restart: the table comes back empty
    store.create_table()
    store.add_message("k", ChatMessage(content="after"))
    assert [m.content for m in store.get_messages("k")] == ["after"]


# More messages than one transaction holds: appends take a lease, replaces write a new
# generation and flip to it, removals commit the meta item and delete the items after.
_MANY = numbered(150)
_LARGE_CHANGES: dict[str, tuple[Callable[[DynamoDBChatStore, str], Any], list[str], Any]] = {
    "leased append": (
        lambda s, k: s.add_messages(k, _MANY),
        [m.content or "" for m in [*numbered(3), *_MANY]],
        None,
    ),
    "replace by a new generation": (
        lambda s, k: s.set_messages(k, _MANY),
        [m.content or "" for m in _MANY],
        None,
    ),
    "removal of many": (
        lambda s, k: len(s.delete_messages(k) or []),
        [],
        150,
    ),
}
_BEFORE = {"leased append": numbered(3)}


@pytest.mark.parametrize("kind", [FaultKind.DROP_REQUEST, FaultKind.DROP_REPLY])
@pytest.mark.parametrize("change", list(_LARGE_CHANGES))
def test_a_large_change_cut_anywhere_applies_once(moto: Any, change: str, kind: FaultKind) -> None:
    """Each request of a change too large for one transaction, cut in turn, applies it once.

    If this fails: a step of the large paths (the lease, the flip to a new generation, the
    deletes after a removal) is not recognized when retried after it landed, or a clean-up
    removes what a landed commit made visible.
    """
    direct = moto.store("native", ttl=3600)
    change_call, after, returns = _LARGE_CHANGES[change]
    with FaultProxy(*address_of(moto.url, 80)) as proxy:
        proxied = DynamoDBChatStore(
            **{**moto.factory(direct).keywords, "endpoint_url": f"http://{proxy.host}:{proxy.port}"}
        )
        for nth in range(1, 40):
            key = f"cut-{uuid.uuid4().hex}"
            direct.set_messages(key, _BEFORE.get(change, _MANY))
            fault = proxy.inject(kind, nth=nth)
            try:
                returned = change_call(proxied, key)
            finally:
                proxy.clear()
            if not fault.fired:
                break
            held = [m.content for m in direct.get_messages(key)]
            assert held == after, f"{change}, request {nth} cut ({kind.name}): {held[:5]}..."
            assert returned == returns, f"{change}, request {nth} cut: returned {returned!r}"
            # No lease or stray item blocks or changes the next write.
            direct.add_message(key, ChatMessage(content="later"))
            assert direct.count_messages(key) == len(after) + 1
        else:
            pytest.fail(f"{change} made more than 39 requests")
        assert nth > 3, f"{change} made only {nth - 1} requests through the proxy"
        proxied.close()
    direct.close()
