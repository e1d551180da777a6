"""RedisChatStore when a connection drops mid-call: every change applied exactly once.

A fault proxy (the testing package's) sits between the store and a real redis-server and
cuts one script call: before it reaches the server (DROP_REQUEST) or after the server
applied it and answered (DROP_REPLY). The store retries with the same operation id. The
conformance suite cuts every request of every change on both layouts
(``test_a_change_cut_anywhere_applies_once``); these are the named cases and the options.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llama_index.storage.chat_store.core import BackendUnavailableError, ChatMessage
from llama_index.storage.chat_store.core.backend import Change
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.testing.changes import BEFORE
from llama_index.storage.chat_store.testing.faults import FaultKind, FaultProxy, address_of, url_at
from llama_index.storage.chat_store.testing.samples import numbered
from llama_index.storage.chat_store.testing.services import free_port

NEW = numbered(2, prefix="new")
Store = RedisChatStore


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(*address_of(redis_url, 6379)) as proxy:
        yield proxy


def _proxied_url(redis_url: str, proxy: FaultProxy) -> str:
    return url_at(redis_url, proxy.host, proxy.port)


# The LlamaIndex layout (raw keys, no expiry) and a namespaced one with an expiry.
LAYOUTS: dict[str, dict[str, Any]] = {
    "llama_index": {},
    "namespaced": {"namespace": "retries:", "ttl": 600},
}


@pytest.fixture(params=sorted(LAYOUTS))
def store(request: pytest.FixtureRequest, redis_url: str, proxy: FaultProxy) -> Iterator[Store]:
    with RedisChatStore(redis_url=_proxied_url(redis_url, proxy), **LAYOUTS[request.param]) as s:
        yield s


def test_a_redis_append_whose_reply_is_lost_is_stored_once(store: Store, proxy: FaultProxy) -> None:
    """The case of issue 15: the append landed, its reply was lost; the retry stores nothing.

    If this fails: an acknowledged add_message stores a message twice after a lost reply.
    """
    store.add_message("k", ChatMessage(content="first"))
    fault = proxy.inject(FaultKind.DROP_REPLY, match=rb"EVALSHA")
    store.add_message("k", ChatMessage(content="second"))
    assert fault.fired == 1
    assert [m.content for m in store.get_messages("k")] == ["first", "second"]
    store.delete_messages("k")


def test_without_retries_a_lost_reply_says_the_outcome_is_unknown(
    redis_url: str, proxy: FaultProxy
) -> None:
    """retries=0: a lost reply raises BackendUnavailableError that does not claim a failure.

    If this fails: the error no longer tells the caller the change may have landed.
    """
    with RedisChatStore(redis_url=_proxied_url(redis_url, proxy), retries=0) as store:
        key = f"conv-{uuid.uuid4().hex}"
        store.add_message(key, ChatMessage(content="w"))  # the script is loaded now
        store.delete_messages(key)
        proxy.inject(FaultKind.DROP_REPLY, match=rb"EVALSHA")
        with pytest.raises(BackendUnavailableError, match="outcome is unknown"):
            store.add_message(key, ChatMessage(content="x"))
        assert [m.content for m in store.get_messages(key)] == ["x"]
        store.delete_messages(key)


def test_retries_that_never_reach_the_server_say_nothing_was_applied() -> None:
    """An unreachable server: every attempt fails to connect, so nothing was applied.

    If this fails: a refused connection is reported as an unknown outcome (or not retried).
    """
    store = RedisChatStore(redis_url=f"redis://127.0.0.1:{free_port()}", retries=2)
    for call in (
        lambda: store.add_message("k", ChatMessage(content="x")),
        lambda: asyncio.run(store.adelete_messages("k")),
    ):
        with pytest.raises(BackendUnavailableError, match=r"3 attempt.*nothing was applied"):
            call()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_replayed_script_call_applies_nothing_and_returns_the_first_reply(
    redis_url: str, layout: str
) -> None:
    """The same op (same op id) run twice: the second changes nothing, returns the same.

    If this fails: the record of op ids is not written with the change, or its key is wrong.
    """
    with RedisChatStore(redis_url=redis_url, **LAYOUTS[layout]) as store:
        key = f"conv-{uuid.uuid4().hex}"
        store.set_messages(key, BEFORE)
        pop = Change()
        assert store._drive(store._oldest_plan(key, 2, pop, False)) == BEFORE[:2]
        pop.check = True  # as after a failed send: the resend searches the record
        assert store._drive(store._oldest_plan(key, 2, pop, False)) == BEFORE[:2]
        append = Change()
        store._drive(store._add_plan(key, NEW, None, append))
        append.check = True
        store._drive(store._add_plan(key, NEW, None, append))
        assert store.get_messages(key) == [*BEFORE[2:], *NEW]
        store.delete_messages(key)


def test_retry_options_from_arguments_and_urls_and_unknown_ones_refused() -> None:
    """The retry policy is configurable like any field; a misspelt option stays an error.

    If this fails: a retry option is dropped on the way, or unknown arguments pass silently.
    """
    store = RedisChatStore.from_url("redis://127.0.0.1:1/0?retries=5&retry_deadline=2.5")
    assert (store.retries, store.retry_deadline, store.retry_backoff) == (5, 2.5, 0.05)
    assert RedisChatStore(retries=0).retries == 0
    with pytest.raises(TypeError, match="retrys"):
        RedisChatStore(retrys=1)


@pytest.mark.parametrize(
    ("query", "named"),
    [("ttl=abc", "ttl"), ("retries=x", "retries"), ("cluster=maybe", "cluster"),
     ("refresh_on_read=sometimes", "refresh_on_read"), ("connect_timeout=", "connect_timeout")],
)  # fmt: skip
def test_a_url_option_with_a_bad_value_is_an_error_naming_it(query: str, named: str) -> None:
    """A URL option of ours whose value its field cannot take raises, naming the option.

    If this fails: a value no option takes is read as some default (``cluster=maybe`` was
    ``False``) or fails with a bare conversion error that names no option.
    """
    with pytest.raises(ValueError, match=named):
        RedisChatStore.from_url(f"redis://127.0.0.1:1/0?{query}")
    flags = RedisChatStore.from_url("redis://127.0.0.1:1/0?cluster=off&refresh_on_read=yes&ttl=9")
    assert (flags.cluster, flags.refresh_on_read, flags.ttl) == (False, True, 9)


def test_a_client_that_resends_by_itself_still_stores_a_change_once(
    redis_url: str, proxy: FaultProxy
) -> None:
    """A client passed in, retrying on its own (redis-py's Retry), resends the script itself.

    The store's first attempt skips the op-id search only when its own client cannot resend;
    a client of the caller's may, so every change looks for its op id from the first send.

    If this fails: a lost reply resent by the caller's client stores the message twice.
    """
    client = redis.Redis.from_url(_proxied_url(redis_url, proxy), retry=Retry(NoBackoff(), 2))
    with RedisChatStore(redis_client=client, retries=0) as store:
        key = f"conv-{uuid.uuid4().hex}"
        store.add_message(key, ChatMessage(content="first"))  # the script is loaded now
        fault = proxy.inject(FaultKind.DROP_REPLY, match=rb"EVALSHA")
        store.add_message(key, ChatMessage(content="second"))
        assert fault.fired == 1
        assert [m.content for m in store.get_messages(key)] == ["first", "second"]
        store.delete_messages(key)
    client.close()
