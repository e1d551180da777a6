"""AzureChatStore when a reply is lost: the request reached Azurite and was applied.

A fault proxy (the testing package's) sits between the store and a real Azurite.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.data.tables import TableClient, TableServiceClient

from llama_index.storage.chat_store.azure import AzureChatStore
from llama_index.storage.chat_store.azure._native import OP_RECORD
from llama_index.storage.chat_store.azure.testing import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_connection_string,
)
from llama_index.storage.chat_store.core import (
    BackendUnavailableError,
    Capability,
    ChatMessage,
    NotSentError,
)
from llama_index.storage.chat_store.testing.faults import FaultKind, FaultProxy
from llama_index.storage.chat_store.testing.samples import numbered
from llama_index.storage.chat_store.testing.services import free_port

KEY = "conv"
# The meta entity's write: alone, an HTTP request naming the entity by its keys (RowKey
# 'meta'); with the rows (a conversation that fits one transaction), the transaction.
META_WRITE = rb"^(PUT|MERGE|PATCH) [^\r\n]*RowKey=(%27|')meta(%27|')"
TRANSACTION = rb"^POST [^\r\n]*\$batch"


@pytest.fixture
def proxied(azurite_table_endpoint: str) -> Iterator[tuple[AzureChatStore, FaultProxy]]:
    where = urlsplit(azurite_table_endpoint)
    assert where.hostname is not None
    assert where.port is not None
    table = f"F{uuid.uuid4().hex[:16]}"
    with FaultProxy(where.hostname, where.port) as proxy:
        store = AzureChatStore.from_account_and_key(
            AZURITE_ACCOUNT, AZURITE_KEY,
            endpoint=f"http://{proxy.host}:{proxy.port}{where.path}", chat_table_name=table,
        )  # fmt: skip
        yield store, proxy
        store.close()
    service = TableServiceClient.from_connection_string(
        azurite_connection_string(azurite_table_endpoint)
    )
    with service:
        service.delete_table(table)


@pytest.mark.parametrize(("size", "lost"), [(3, TRANSACTION), (150, META_WRITE)])
def test_a_replace_whose_meta_reply_is_lost_keeps_the_new_conversation(
    proxied: tuple[AzureChatStore, FaultProxy], size: int, lost: bytes
) -> None:
    """The SDK retries the meta write, whose condition then fails on our own commit.

    150 messages take the staged path (rows first, then the meta flip): it used to take that
    failure for a conflict, delete the generation it had just committed and report success,
    leaving a conversation whose rows were gone.
    """
    store, proxy = proxied
    store.set_messages(KEY, numbered(4, prefix="old"))
    new = numbered(size, prefix="new")
    fault = proxy.inject(FaultKind.DROP_REPLY, match=lost)
    try:
        store.set_messages(KEY, new)
        outcome = "returned"
    except Exception as exc:  # which error: checked below
        outcome = type(exc).__name__
    assert fault.fired == 1, "the meta write was never seen: the pattern no longer matches"
    assert outcome in ("returned", "BackendUnavailableError")
    assert store.get_messages(KEY) == new  # the write landed: it is what the store holds
    assert store.count_messages(KEY) == size


@pytest.fixture
def make_proxied(
    azurite_table_endpoint: str,
) -> Iterator[Callable[..., tuple[AzureChatStore, AzureChatStore, FaultProxy]]]:
    """``make(**options)``: a store through a fault proxy, one direct, on one new table."""
    where = urlsplit(azurite_table_endpoint)
    assert where.hostname is not None
    assert where.port is not None
    proxy = FaultProxy(where.hostname, where.port)
    proxied_endpoint = f"http://{proxy.host}:{proxy.port}{where.path}"
    table = f"F{uuid.uuid4().hex[:16]}"
    made: list[Any] = []

    def make(**options: Any) -> tuple[AzureChatStore, AzureChatStore, FaultProxy]:
        injected = options.pop("injected", False)
        common = {"chat_table_name": table, "metadata_table_name": f"{table}M", **options}
        if injected:
            # LlamaIndex's constructor: a service client with azure-core's default retries.
            service = TableServiceClient.from_connection_string(
                azurite_connection_string(proxied_endpoint)
            )
            made.append(service)
            store = AzureChatStore(service, **common)
        else:
            store = AzureChatStore.from_account_and_key(
                AZURITE_ACCOUNT, AZURITE_KEY, endpoint=proxied_endpoint, **common
            )
        direct = AzureChatStore.from_account_and_key(
            AZURITE_ACCOUNT, AZURITE_KEY, endpoint=azurite_table_endpoint, **common
        )
        made.extend([store, direct])
        return store, direct, proxy

    yield make
    for thing in made:
        thing.close()
    proxy.close()
    service = TableServiceClient.from_connection_string(
        azurite_connection_string(azurite_table_endpoint)
    )
    with service:
        for name in (table, f"{table}M"):
            service.delete_table(name)


@pytest.mark.parametrize("injected", [False, True], ids=["own-client", "injected-client"])
def test_the_sdk_never_resends_a_change(
    make_proxied: Callable[..., tuple[AzureChatStore, AzureChatStore, FaultProxy]],
    injected: bool,
) -> None:
    """With the store's retries off, a transaction whose reply is lost is sent exactly once.

    azure-core's RetryPolicy would resend it with no check of what the lost attempt did
    (retry_total is 10 on a service client built with the SDK's defaults). If this fails: a
    request goes out without ``retry_total=0``.
    """
    store, direct, proxy = make_proxied(retries=0, injected=injected)
    store.set_messages(KEY, numbered(2))
    fault = proxy.inject(FaultKind.DROP_REPLY, match=TRANSACTION)
    with pytest.raises(BackendUnavailableError, match="outcome is unknown"):
        store.add_message(KEY, ChatMessage(content="once"))
    assert fault.seen == 1
    assert [m.content for m in direct.get_messages(KEY)][-1:] == ["once"]
    assert direct.count_messages(KEY) == 3


def test_a_lost_reply_is_an_unknown_outcome_in_both_apis(
    make_proxied: Callable[..., tuple[AzureChatStore, AzureChatStore, FaultProxy]],
) -> None:
    """Sync and async: a dropped reply is "outcome unknown", never NotSentError.

    azure-core's aiohttp transport raises ServiceRequestError ("not sent") also for a
    connection the server closed after the request went out. If this fails: the store takes
    that for a request never sent and would say "nothing was applied" of an applied change.
    """
    store, direct, proxy = make_proxied(retries=0)
    store.set_messages(KEY, numbered(1))

    async def append_async() -> None:
        try:
            await store.aadd_message(KEY, ChatMessage(content="async"))
        finally:
            await store.aclose()

    for call in (
        lambda: store.add_message(KEY, ChatMessage(content="sync")),
        lambda: asyncio.run(append_async()),
    ):
        proxy.inject(FaultKind.DROP_REPLY, match=TRANSACTION)
        with pytest.raises(BackendUnavailableError, match="outcome is unknown") as raised:
            call()
        assert not isinstance(raised.value, NotSentError)
        proxy.clear()
        store.count_messages(KEY)  # the store learns the meta its lost commit wrote
    assert [m.content for m in direct.get_messages(KEY)] == ["m0", "sync", "async"]


def test_a_change_whose_connection_is_refused_applied_nothing() -> None:
    """Sync and async: a change that could not connect raises NotSentError "nothing applied".

    If this fails: a refused connection is taken for an unknown outcome, or the first write
    of a call counts as sent before it was.
    """
    store = AzureChatStore.from_account_and_key(
        AZURITE_ACCOUNT, AZURITE_KEY, endpoint=f"http://127.0.0.1:{free_port()}/devstoreaccount1",
        chat_table_name="Refused", retries=1, retry_backoff=0.01,
    )  # fmt: skip
    store._tables_ready = True  # as after a first call: the change's own requests are refused

    async def append_async() -> None:
        try:
            await store.aadd_message(KEY, ChatMessage(content="never"))
        finally:
            await store.aclose()

    for call in (
        lambda: store.add_message(KEY, ChatMessage(content="never")),
        lambda: asyncio.run(append_async()),
    ):
        with pytest.raises(NotSentError, match="nothing was applied"):
            call()


def _during_resend_wait(
    proxy: FaultProxy, call: Callable[[], Any], meanwhile: Callable[[], object]
) -> list[Any]:
    """Run ``call`` with its transaction's reply lost; ``meanwhile()`` before it is resent."""
    fault = proxy.inject(FaultKind.DROP_REPLY, match=TRANSACTION)
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(call()))
    worker.start()
    while not fault.fired and worker.is_alive():
        time.sleep(0.01)
    meanwhile()
    worker.join()
    assert fault.seen == 2  # the lost attempt and one resend
    return outcome


@pytest.mark.parametrize("layout", ["native", "llama_index"])
@pytest.mark.parametrize("between", [3, OP_RECORD + 1])
def test_a_resend_after_other_changes_finds_its_own_commit_or_says_unknown(
    make_proxied: Callable[..., tuple[AzureChatStore, AzureChatStore, FaultProxy]],
    between: int,
    layout: str,
) -> None:
    """An append whose reply is lost, resent after other stores' changes, applies once.

    The resend fails its condition on its own commit; the record of op ids (the meta
    entity's, or the last chat row's in LlamaIndex's layout) names it while fewer than
    OP_RECORD changes came in between: the call succeeds. With more, it cannot tell and
    raises BackendUnavailableError (outcome unknown) rather than append again. If this
    fails: the record is not consulted or not carried along, or a missing entry is taken
    for "not applied".
    """
    store, direct, proxy = make_proxied(retry_backoff=4.0, layout=layout)
    store.set_messages(KEY, numbered(2))

    def append() -> BackendUnavailableError | None:
        try:
            store.add_message(KEY, ChatMessage(content="mine"))
        except BackendUnavailableError as exc:
            return exc
        return None

    def others() -> None:  # while the store waits to resend (2-4 s)
        for i in range(between):
            direct.add_message(KEY, ChatMessage(content=f"other{i}"))

    outcome = _during_resend_wait(proxy, append, others)
    texts = [m.content for m in direct.get_messages(KEY)]
    assert texts.count("mine") == 1, texts
    if between < OP_RECORD:
        assert outcome == [None]
    else:
        assert isinstance(outcome[0], BackendUnavailableError)
        assert "outcome is unknown" in str(outcome[0])


@pytest.mark.parametrize("removal", ["delete_messages", "delete_last_message"])
def test_an_emptying_removal_resent_after_a_refill_leaves_the_key_listed(
    make_proxied: Callable[..., tuple[AzureChatStore, AzureChatStore, FaultProxy]],
    removal: str,
) -> None:
    """A removal that emptied the conversation, its reply lost, unlists it only if still empty.

    Another store refills the conversation before the resend; the resend finds its own commit
    in the record and returns what it removed, but the key now holds a message and stays in
    get_keys. If this fails: the removal unlists on the meta read after the resend.
    """
    store, direct, proxy = make_proxied(retry_backoff=4.0)
    store.set_messages(KEY, numbered(1))
    outcome = _during_resend_wait(
        proxy,
        lambda: getattr(store, removal)(KEY),
        lambda: direct.set_messages(KEY, [ChatMessage(content="refill")]),
    )
    removed = outcome[0] if removal == "delete_last_message" else outcome[0][0]
    assert removed.content == "m0"
    assert [m.content for m in direct.get_messages(KEY)] == ["refill"]
    assert direct.get_keys() == [KEY]


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except BackendUnavailableError as exc:
        return exc


def test_llama_index_layout_emptying_removal_resent_after_a_refill_says_unknown(
    make_proxied: Callable[..., tuple[AzureChatStore, AzureChatStore, FaultProxy]],
) -> None:
    """LlamaIndex's layout: a lost emptying removal, resent after a refill, never takes it.

    The removal committed (its reply lost) and another store filled the conversation again
    before the resend. The refill starts a new record (nothing ties it to the old one), so
    the resend cannot tell and raises "outcome unknown". If this fails: the resend takes the
    refill's record for its own chain, removes the refill, or reports success it cannot prove.
    """
    store, direct, proxy = make_proxied(retry_backoff=4.0, layout="llama_index")
    assert Capability.EXACTLY_ONCE in store.capabilities
    store.set_messages(KEY, numbered(2))
    outcome = _during_resend_wait(
        proxy,
        lambda: _outcome(lambda: store.delete_messages(KEY)),
        lambda: direct.set_messages(KEY, [ChatMessage(content="refill")]),
    )
    assert isinstance(outcome[0], BackendUnavailableError)
    assert "outcome is unknown" in str(outcome[0])
    assert [m.content for m in direct.get_messages(KEY)] == ["refill"]
    assert direct.get_keys() == [KEY]


def test_llama_index_layout_a_removal_left_pending_is_fenced_not_waited_for(
    make_proxied: Callable[..., tuple[AzureChatStore, AzureChatStore, FaultProxy]],
    azurite_table_endpoint: str,
) -> None:
    """LlamaIndex's layout: a removal that marked itself pending, then stopped, blocks nobody.

    The first store records its emptying removal in the metadata entity, then its deletion
    is lost on the way (retries off): the mark stays, naming a row that still has its
    ETag. Another store's removal makes that one fail for good (it touches the row), then
    removes and returns every message; the metadata entity goes with the conversation. If
    this fails: the mark is waited for, ignored (two removals could both take the
    record), or left behind.
    """
    store, direct, proxy = make_proxied(retries=0, layout="llama_index")
    store.set_messages(KEY, numbered(3))
    fault = proxy.inject(FaultKind.DROP_REQUEST, match=TRANSACTION)
    with pytest.raises(BackendUnavailableError):
        store.delete_messages(KEY)
    assert fault.fired == 1
    assert [m.content for m in direct.delete_messages(KEY) or []] == ["m0", "m1", "m2"]
    assert direct.get_messages(KEY) == []
    assert direct.get_keys() == []
    metadata = TableClient.from_connection_string(
        azurite_connection_string(azurite_table_endpoint), direct.metadata_table_name
    )
    with metadata:
        assert list(metadata.list_entities()) == []


@pytest.mark.parametrize("removal", ["trim", "empty"])
def test_llama_index_layout_first_rows_whose_reply_is_lost_never_come_back(
    make_proxied: Callable[..., tuple[AzureChatStore, AzureChatStore, FaultProxy]],
    removal: str,
) -> None:
    """LlamaIndex's layout: an empty conversation's first append, its reply lost, lands once.

    Its rows are created with no row to be conditional on. Another store removes the new
    message before the first store learns the outcome (trims it with a later message left,
    or empties the conversation): a resend of the creation would succeed again and bring it
    back (CI's history check under faults saw a trimmed message return). The check that
    replaces the resend is held up here (5 s) until the removal is done. If this fails: the
    creation is resent, or a lost reply is taken for "not applied" without proof.
    """
    store, direct, proxy = make_proxied(layout="llama_index", retry_backoff=4.0)
    lost = proxy.inject(FaultKind.DROP_REPLY, match=TRANSACTION)
    # The chat rows' query after the lost reply (the first read them before the claim).
    proxy.inject(FaultKind.STALL, match=rb"^GET [^\r\n]*\$select=RowKey", nth=2, seconds=5)
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            _outcome(lambda: store.add_message(KEY, ChatMessage(content="mine")))
        )
    )
    worker.start()
    while not lost.fired and worker.is_alive():
        time.sleep(0.01)
    assert [m.content for m in direct.get_messages(KEY)] == ["mine"]
    if removal == "trim":
        direct.add_message(KEY, ChatMessage(content="later"))
        assert [m.content for m in direct.delete_oldest_messages(KEY, 1)] == ["mine"]
    else:
        assert [m.content for m in direct.delete_messages(KEY) or []] == ["mine"]
    worker.join()
    assert lost.seen == 1, "the creation was sent again"
    left = [m.content for m in direct.get_messages(KEY)]
    assert left == (["later"] if removal == "trim" else []), left
    if removal == "trim":  # the record's chain on the rows left proves it landed
        assert outcome == [None]
    else:  # nothing left to prove it: the store says so rather than guess
        assert isinstance(outcome[0], BackendUnavailableError)
        assert "outcome is unknown" in str(outcome[0])
