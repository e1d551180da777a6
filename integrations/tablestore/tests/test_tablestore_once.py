"""Exactly once: a resent change finds its record, the SDK never resends an unknown outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    Capability,
    ChatMessage,
    NotSentError,
)
from llama_index.storage.chat_store.core.backend import Change, Plan
from llama_index.storage.chat_store.tablestore import TablestoreChatStore
from llama_index.storage.chat_store.tablestore._sdk import WritesResentOnlyIfRefused, ts
from llama_index.storage.chat_store.tablestore.testing import TablestoreConnection
from llama_index.storage.chat_store.testing.samples import numbered
from llama_index.storage.chat_store.testing.services import free_port

LAYOUTS = ["native", "llama_index"]


def _texts(messages: Any) -> list[str | None]:
    if messages is None or isinstance(messages, ChatMessage):
        messages = [messages]
    return [m.content if m else None for m in messages]


def _attempt(
    store: TablestoreChatStore, make: Callable[[Change], Plan[Any]], change: Change
) -> Any:
    """One attempt of a change, as the store's retry runs it after a lost reply."""
    change.check = change.attempts > 0
    change.attempts += 1
    return store._drive(make(change))


_REMOVALS: dict[str, tuple[Callable[[TablestoreChatStore, Change], Plan[Any]], list[str]]] = {
    "pop": (lambda s, once: s._pop_plan("k", once), ["m4"]),
    "delete_at": (lambda s, once: s._delete_at_plan("k", 1, once), ["m1"]),
    "oldest": (lambda s, once: s._oldest_plan("k", 2, once, False), ["m0", "m1"]),
    "delete_all": (lambda s, once: s._delete_all_plan("k", once), [f"m{i}" for i in range(5)]),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("removal", list(_REMOVALS))
def test_a_resent_removal_returns_its_first_reply_after_later_changes(
    new_store: Callable[..., Any], layout: str, removal: str
) -> None:
    """A removal resent after other writers changed the conversation removes nothing more.

    If this fails: the op id is not recorded with the commit, or the record of a change is
    overwritten by the next ones (or lost with an emptied conversation's commit row).
    """
    factory = new_store(layout=layout)
    store, other = factory(), factory()
    store.set_messages("k", numbered(5))
    make, removed = _REMOVALS[removal]
    once = Change()
    assert _texts(_attempt(store, lambda o: make(store, o), once)) == removed
    other.add_message("k", ChatMessage(content="later"))
    after = _texts(other.get_messages("k"))
    assert _texts(_attempt(store, lambda o: make(store, o), once)) == removed
    assert _texts(other.get_messages("k")) == after


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_resent_append_applies_once(new_store: Callable[..., Any], layout: str) -> None:
    """An append resent after other appends is not appended again.

    If this fails: the append's commit does not carry its op id, or a retry does not look.
    """
    factory = new_store(layout=layout)
    store, other = factory(), factory()
    once = Change()
    batch = [ChatMessage(content="mine")]

    def append(o: Change) -> Plan[None]:
        return store._add_plan("k", batch, None, o)

    _attempt(store, append, once)
    other.add_messages("k", numbered(3))
    _attempt(store, append, once)
    assert _texts(other.get_messages("k")) == ["mine", "m0", "m1", "m2"]


@pytest.mark.parametrize("api", ["PutRow", "UpdateRow", "DeleteRow", "BatchWriteRow"])
def test_the_sdk_never_resends_a_change_whose_outcome_is_unknown(api: str) -> None:
    """The SDK resends a change only when the service refused it; reads as it always did.

    If this fails: a change timed out inside the service (maybe applied) would be resent by
    the SDK, outside the store's op-id retries.
    """
    policy = WritesResentOnlyIfRefused(ts.WriteRetryPolicy())
    unknown = ts.OTSServiceError(503, "OTSTimeout", "Request timeout.")
    refused = ts.OTSServiceError(503, "OTSServerBusy", "Server is busy.")
    assert not policy.should_retry(0, unknown, api)
    assert policy.should_retry(0, refused, api)
    assert policy.should_retry(0, unknown, "GetRow")
    assert WritesResentOnlyIfRefused(policy).inner is policy.inner


def test_clients_the_store_builds_use_that_policy(
    new_store: Callable[..., Any], raw_client: Any
) -> None:
    """Own clients and those rebuilt from an injected one wrap the retry policy given.

    If this fails: ``retry_policy=WriteRetryPolicy()`` would let the SDK resend changes.
    """
    store = new_store(retry_policy=ts.WriteRetryPolicy())()
    assert isinstance(store._sync_client().retry_policy, WritesResentOnlyIfRefused)
    injected = TablestoreChatStore(tablestore_client=raw_client, table_name=store.table_name)
    assert isinstance(injected._client_arguments()["retry_policy"], WritesResentOnlyIfRefused)


def test_a_refused_connection_says_nothing_was_applied(
    tablestore_connection: TablestoreConnection,
) -> None:
    """With no server listening, a change fails after its retries saying nothing was applied.

    If this fails: a refused connection is not translated to NotSentError, so a caller
    cannot tell it from a change that may have been applied.
    """
    c = tablestore_connection
    store = TablestoreChatStore(
        endpoint=f"http://127.0.0.1:{free_port()}", instance_name=c.instance_name,
        access_key_id=c.access_key_id, access_key_secret=c.access_key_secret,
        layout="native", retries=2, retry_backoff=0.01,
    )  # fmt: skip
    with pytest.raises(NotSentError, match="nothing was applied"):
        store.add_message("k", ChatMessage(content="x"))
    with pytest.raises(NotSentError, match="nothing was applied"):
        asyncio.run(store.adelete_last_message("k"))
    with pytest.raises(BackendUnavailableError, match="gave up after 3 attempt"):
        store.get_messages("k")


def test_retry_options_from_the_url_and_the_capability(
    tablestore_connection: TablestoreConnection,
) -> None:
    """``retries`` and friends come from the URL and survive ``to_dict``; 0 drops EXACTLY_ONCE."""
    c = tablestore_connection
    host = c.endpoint.split("://", 1)[1]
    url = f"tablestore://{c.instance_name}@{host}/t?scheme=http&retries=0&retry_deadline=2.5"
    store = TablestoreChatStore.from_url(url, access_key_id="a", access_key_secret="b")
    assert (store.retries, store.retry_deadline) == (0, 2.5)
    assert Capability.EXACTLY_ONCE not in store.capabilities
    assert Capability.EXACTLY_ONCE in store.model_copy(update={"retries": 1}).capabilities
    assert TablestoreChatStore.from_dict(store.to_dict(), access_key_secret="b").retries == 0
    for bad in ("retries=x", "retry_backoff=soon", "layout=flat"):  # refused, naming the option
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            TablestoreChatStore.from_url(f"{url}&{bad}", access_key_id="a", access_key_secret="b")
