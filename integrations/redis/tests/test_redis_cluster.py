"""RedisChatStore on a real three-node Redis Cluster: the whole suite on one slot (a hash-tagged
namespace) and spread over buckets (an untagged one), plus the one-slot rules."""

from __future__ import annotations

import asyncio
import functools
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from llama_index.storage.chat_store.core import (
    BaseChatStore,
    ChatMessage,
    ConfigurationError,
    CorruptDataError,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import Change
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.redis.layout import ListLayout
from llama_index.storage.chat_store.testing import ChatStoreConformance
from llama_index.storage.chat_store.testing.faults import FaultProxy, url_at

Address = tuple[str, int]


def _namespace(name: str | None = None) -> str:
    """A namespace hash-tagged with ``name``: a store's keys share one slot (one node)."""
    return f"{{{name or 't-' + uuid.uuid4().hex}}}:"


@dataclass(frozen=True)
class _Remap:
    """redis-py's ``address_remap``: reach one node at another address (a fault proxy)."""

    node: tuple[str, int]
    to: tuple[str, int]

    def __call__(self, address: tuple[str, int]) -> tuple[str, int]:
        return self.to if address == self.node else address


def _slot_owner(url: str, namespace: str) -> tuple[str, int]:
    """The node serving the namespace's hash slot: every key of the store lives there."""
    with redis.RedisCluster.from_url(url) as raw:
        node = raw.get_node_from_key(namespace + "k")
        return node.host, node.port


class TestRedisClusterConformance(ChatStoreConformance):
    @pytest.fixture
    def store_factory_for(
        self, redis_cluster_url: str
    ) -> Callable[..., Callable[[], BaseChatStore]]:
        def factory_for(
            name: str, *, address: tuple[str, int] | None = None, **options: Any
        ) -> Callable[[], BaseChatStore]:
            namespace, url = _namespace(name), redis_cluster_url
            if address is not None:
                # The owner of the store's slot is reached at ``address``; start there too
                # (a startup node that is the owner is not remapped).
                url = url_at(redis_cluster_url, *address)
                remap = _Remap(_slot_owner(redis_cluster_url, namespace), address)
                options["client_options"] = {"address_remap": remap}
            return functools.partial(
                RedisChatStore, redis_url=url, namespace=namespace, cluster=True, **options
            )

        return factory_for

    @pytest.fixture
    def server_address(self, redis_cluster_url: str, storage_name: str) -> tuple[str, int]:
        return _slot_owner(redis_cluster_url, _namespace(storage_name))

    @pytest.fixture
    def list_name(self, storage_name: str) -> Callable[[str], str]:
        """Where the store keeps conversation ``key`` (the LIST's name)."""
        return lambda key: _namespace(storage_name) + key

    @pytest.fixture
    def make_corrupt(
        self, store: RedisChatStore, redis_cluster_url: str, list_name: Callable[[str], str]
    ) -> Iterator[Callable[[str], BaseChatStore]]:
        raw = redis.RedisCluster.from_url(redis_cluster_url)

        def corrupt(key: str) -> BaseChatStore:
            store.add_message(key, ChatMessage(content="fine"))
            raw.rpush(list_name(key), b'{"role": "user", "blocks": 42}')
            return store

        yield corrupt
        raw.close()


def test_a_hash_tagged_namespace_keeps_one_slot(redis_cluster_url: str) -> None:
    """A hash-tagged namespace is not bucketed: conversations and registry share its slot.

    If this fails: existing single-slot data would no longer be found.
    """
    namespace = _namespace()
    store = RedisChatStore(redis_url=redis_cluster_url, namespace=namespace, cluster=True)
    try:
        store.add_message("k", ChatMessage(content="x"))
        with redis.RedisCluster.from_url(redis_cluster_url) as raw:
            assert raw.llen(namespace + "k") == 1
            assert raw.zrange(namespace + "\0keys", 0, -1) == [b"k"]
    finally:
        store.clear()
        store.close()


def test_plain_client_on_a_cluster_node_says_what_to_do(redis_cluster_url: str) -> None:
    """Told it is no cluster, the store meets CROSSSLOT/MOVED replies and says what to do."""
    store = RedisChatStore(redis_url=redis_cluster_url, namespace="plain:", cluster=False)
    with pytest.raises(ConfigurationError, match="cluster=True"):
        store.add_message("k0", ChatMessage(content="x"))


@pytest.mark.parametrize("bad", [b"{not json", b"\xff\xfe not UTF-8"])
def test_a_removal_of_corrupt_data_removes_it_and_names_key_position_and_data(
    redis_cluster_url: str, bad: bytes
) -> None:
    """The Redis-family rule on the cluster too: removed, then CorruptDataError with key,
    position and the removed data (see test_redis_faults)."""
    namespace = _namespace()
    store = RedisChatStore(redis_url=redis_cluster_url, namespace=namespace, cluster=True)
    raw = redis.RedisCluster.from_url(redis_cluster_url)
    try:
        for removal, left in [
            (lambda: store.delete_message("k", 1), 2),
            (lambda: store.delete_oldest_messages("k", 2), 1),
            (lambda: store.delete_messages("k"), 0),
        ]:
            store.set_messages("k", [ChatMessage(content=c) for c in "abc"])
            raw.lset(namespace + "k", 1, bad)
            with pytest.raises(CorruptDataError, match="removed") as info:
                removal()
            assert (info.value.key, info.value.position, info.value.data) == ("k", 1, bad)
            assert store.count_messages("k") == left
    finally:
        store.clear()
        store.close()
        raw.close()


def test_a_replayed_change_applies_nothing_and_returns_the_first_reply(
    redis_cluster_url: str,
) -> None:
    """The same op (same op id) twice on the cluster: the record shares the conversation's
    slot, and the second call changes nothing and returns what the first did.

    If this fails: the record's key is not named in KEYS or hashes to another slot
    (CROSSSLOT), or a replay is applied again.
    """
    store = RedisChatStore(redis_url=redis_cluster_url, namespace=_namespace(), cluster=True)
    try:
        store.set_messages("k", [ChatMessage(content=c) for c in "abcd"])
        first = Change()  # a cluster client may resend: every send searches the record
        assert [m.content for m in store._drive(store._oldest_plan("k", 2, first, False))] == [
            "a",
            "b",
        ]
        assert [m.content for m in store._drive(store._oldest_plan("k", 2, first, False))] == [
            "a",
            "b",
        ]
        pop = Change()
        last = store._drive(store._pop_plan("k", pop))
        assert last is not None
        assert last.content == "d"
        assert store._drive(store._pop_plan("k", pop)) == last
        assert [m.content for m in asyncio.run(store.aget_messages("k"))] == ["c"]
    finally:
        store.clear()
        store.close()


# -- a namespace without a hash tag: spread over buckets --------------------------------------

# Proxies in front of every node, by the address of the first (the one a store starts from):
# how a store built for that address reaches each node.
_PROXIED: dict[Address, tuple[tuple[Address, Address], ...]] = {}


@dataclass(frozen=True)
class _RemapAll:
    """redis-py's ``address_remap``: reach each listed node at another address."""

    pairs: tuple[tuple[Address, Address], ...]

    def __call__(self, address: Address) -> Address:
        return dict(self.pairs).get(address, address)


def _primaries(url: str) -> list[Address]:
    with redis.RedisCluster.from_url(url) as raw:
        return sorted((node.host, node.port) for node in raw.get_primaries())


def _conversation(namespace: str, key: str) -> str:
    """Where a bucketed store keeps ``key`` (the documented layout)."""
    return ListLayout(namespace, bucketed=True).conversation(key)


class TestRedisClusterBucketsConformance(TestRedisClusterConformance):
    """The whole suite with an untagged namespace and the cluster detected, not configured.

    Fault tests: a bucketed store talks to every node, so the proxy fixture puts one proxy in
    front of each node, all sharing one schedule of faults (the n-th request to any node is
    cut), and a store built for the proxy's address reaches every node through them.
    """

    @pytest.fixture
    def store_factory_for(
        self, redis_cluster_url: str
    ) -> Callable[..., Callable[[], BaseChatStore]]:
        def factory_for(
            name: str, *, address: Address | None = None, **options: Any
        ) -> Callable[[], BaseChatStore]:
            url = redis_cluster_url
            if address is not None:
                url = url_at(redis_cluster_url, *address)
                # Said, not asked: the question would go to the startup address only.
                options["cluster"] = True
                options["client_options"] = {"address_remap": _RemapAll(_PROXIED.get(address, ()))}
            return functools.partial(
                RedisChatStore, redis_url=url, namespace=f"b-{name}:", **options
            )

        return factory_for

    @pytest.fixture
    def server_address(self, redis_cluster_url: str) -> Address:
        return _primaries(redis_cluster_url)[0]

    @pytest.fixture
    def fault_proxy(self, redis_cluster_url: str) -> Iterator[FaultProxy]:
        nodes = _primaries(redis_cluster_url)
        first = FaultProxy(*nodes[0])
        proxies = [first, *(FaultProxy(*node, sharing=first) for node in nodes[1:])]
        entry = (first.host, first.port)
        _PROXIED[entry] = tuple((n, (p.host, p.port)) for n, p in zip(nodes, proxies, strict=True))
        yield first
        del _PROXIED[entry]
        for proxy in proxies:
            proxy.close()

    @pytest.fixture
    def list_name(self, storage_name: str) -> Callable[[str], str]:
        return lambda key: _conversation(f"b-{storage_name}:", key)


@pytest.fixture
def spread(redis_cluster_url: str) -> Iterator[RedisChatStore]:
    """A store whose namespace has no hash tag (the cluster detected): bucketed."""
    namespace = f"spread-{uuid.uuid4().hex}:"
    with RedisChatStore(redis_url=redis_cluster_url, namespace=namespace) as store:
        yield store
        store.clear()


def test_conversations_spread_over_every_node(
    spread: RedisChatStore, redis_cluster_url: str
) -> None:
    """3,000 conversations written through one store: no node holds more than 45% of them.

    If this fails: the bucket tags do not cover the slot ranges evenly, or the store put every
    conversation in one slot (a hash tag of the spread.namespace's own, or one bucket).
    """
    keys = [f"user-{i}" for i in range(3000)]
    for key in keys:
        spread.add_message(key, ChatMessage(content="hi"))
    held = {}
    for host, port in _primaries(redis_cluster_url):
        with redis.Redis(host=host, port=port) as node:
            names = node.scan_iter(match=f"{spread.namespace}{{???}}*", count=1000, _type="list")
            held[port] = sum(1 for name in names if b"\0" not in name)
    assert sum(held.values()) == len(keys), held
    assert max(held.values()) <= 0.45 * len(keys), held
    assert sorted(spread.get_keys()) == sorted(keys)


def test_a_cluster_url_alone_just_works(redis_cluster_url: str) -> None:
    """No cluster=True, no namespace: the store asks the server, then spreads LlamaIndex's keys.

    If this fails: the detection (CLUSTER INFO) did not run or its answer was not used, so a
    plain client met MOVED/CROSSSLOT replies.
    """
    key = f"alone-{uuid.uuid4().hex}"
    store = RedisChatStore(redis_url=redis_cluster_url)
    try:
        store.add_messages(key, [ChatMessage(content="a"), ChatMessage(content="b")])
        assert [m.content for m in store.get_messages(key)] == ["a", "b"]
        assert key in store.get_keys()
        with redis.RedisCluster.from_url(redis_cluster_url) as raw:
            assert raw.llen(_conversation("", key)) == 2
        store.delete_messages(key)
        assert key not in store.get_keys()
    finally:
        store.close()


def test_a_cluster_url_alone_just_works_async(redis_cluster_url: str) -> None:
    """The async path asks too, without blocking its event loop (first call is async).

    If this fails: the async calls built their plan before knowing the server is a cluster.
    """
    key = f"alone-{uuid.uuid4().hex}"

    async def run() -> list[str]:
        store = RedisChatStore(redis_url=redis_cluster_url)
        try:
            await store.aadd_message(key, ChatMessage(content="a"))
            listed = await store.aget_keys()
            assert [m.content for m in await store.aget_messages(key)] == ["a"]
            await store.adelete_messages(key)
            return listed
        finally:
            await store.aclose()

    assert key in asyncio.run(run())


def test_a_namespace_with_an_unclosed_brace_is_refused(redis_cluster_url: str) -> None:
    """A '{' without a hash tag would capture the bucket's tag: refused, told or detected.

    If this fails: such a namespace put its keys in slots the registry is not in.
    """
    with pytest.raises(ConfigurationError, match="hash tag"):
        RedisChatStore(redis_url=redis_cluster_url, cluster=True, namespace="app{1:")
    detected = RedisChatStore(redis_url=redis_cluster_url, namespace="app{}:")
    with pytest.raises(ConfigurationError, match="hash tag"):
        detected.add_message("k", ChatMessage(content="x"))
    detected.close()


def test_the_bucket_format_is_pinned(redis_cluster_url: str) -> None:
    """Bucket count, key hash and tags are the stored format; the server agrees on the slots.

    If this fails: the format changed, and data written before is no longer found.
    """
    layout = ListLayout("app:", bucketed=True)
    assert len(layout.homes) == 128
    assert layout.homes[:4] == ("app:{021}", "app:{025}", "app:{029}", "app:{104}")
    assert layout.conversation("user1") == "app:{041}user1"
    assert layout.conversation("é") == "app:{077}é"
    assert all(
        layout.conversation(k) == layout.homes[zlib.crc32(k.encode()) % 128] + k
        for k in ("", "a", "user-7", "{x}")
    )
    with redis.RedisCluster.from_url(redis_cluster_url) as raw:
        slots = [raw.keyslot(home + "x") for home in layout.homes]
    assert [slot // 128 for slot in slots] == list(range(128))


def test_adopt_registers_lists_in_their_own_bucket_only(
    spread: RedisChatStore, redis_cluster_url: str
) -> None:
    """adopt scans every node for the spread.namespace's bucketed lists and registers each in its
    bucket; a list under a bucket its key does not hash to is not this layout's, and is left.

    If this fails: the scan pattern or the key parsing misreads the bucket prefix.
    """
    message = message_to_json(ChatMessage(content="old"))
    right = _conversation(spread.namespace, "written-elsewhere")
    homes = ListLayout(spread.namespace, bucketed=True).homes
    wrong_home = next(home for home in homes if home not in right)
    with redis.RedisCluster.from_url(redis_cluster_url) as raw:
        raw.rpush(right, message)
        raw.rpush(wrong_home + "stray", message)
        try:
            assert spread.adopt() == ["written-elsewhere"]
            assert spread.get_keys() == ["written-elsewhere"]
        finally:
            raw.delete(wrong_home + "stray")


def test_clear_empties_every_bucket(spread: RedisChatStore, redis_cluster_url: str) -> None:
    """clear removes the conversations of every bucket, more than a page in some.

    If this fails: clear stopped after one page or one bucket.
    """
    keys = [f"c{i}" for i in range(600)]
    for key in keys:
        spread.add_message(key, ChatMessage(content="x"))
    spread.clear()
    assert spread.get_keys() == []
    with redis.RedisCluster.from_url(redis_cluster_url) as raw:
        assert not [k for k in keys if raw.exists(_conversation(spread.namespace, k))]


@pytest.mark.parametrize("limit", [1, 7, 100, 500])
def test_catalog_pages_walk_every_bucket_in_key_order(spread: RedisChatStore, limit: int) -> None:
    """Pages merged over the buckets list every key once, in byte order, prefix respected.

    If this fails: the merge returned a page before every bucket that may hold part of it
    was read (a key skipped), or a cursor re-listed a key.
    """
    keys = [f"{p}-{i:03d}" for p in ("a", "b") for i in range(150)] + ["é", "z"]
    for key in keys:
        spread.add_message(key, ChatMessage(content="x"))
    for prefix, expected in [(None, sorted(keys)), ("b-", sorted(k for k in keys if k[0] == "b"))]:
        listed: list[str] = []
        after = None
        while True:
            page = spread.list_conversations(prefix=prefix, after=after, limit=limit)
            assert len(page.conversations) <= limit
            listed += [entry.key for entry in page.conversations]
            if page.next_after is None:
                break
            after = page.next_after
        assert listed == expected
    assert [e.message_count for e in spread.list_conversations(limit=3).conversations] == [1] * 3


def test_a_change_is_one_script_call_on_one_node(
    spread: RedisChatStore, redis_cluster_url: str
) -> None:
    """Bucketed, a single-conversation operation costs what it costs on one slot: one call.

    If this fails: a change touches more than its bucket (several round trips or nodes).
    """
    # Warm: the client knows the slots and the node has both scripts loaded.
    spread.add_message("warm", ChatMessage(content="x"))
    spread.add_message("warm", ChatMessage(content="x"))
    spread.delete_last_message("warm")
    nodes = [redis.Redis(host=h, port=p) for h, p in _primaries(redis_cluster_url)]
    try:
        for node in nodes:
            node.config_resetstat()
        spread.add_message("warm", ChatMessage(content="y"))
        assert spread.delete_last_message("warm") is not None
        # commandstats also counts the commands a script runs: count the script calls.
        calls = [
            {n: s["calls"] for n, s in node.info("commandstats").items() if "eval" in n}
            for node in nodes
        ]
        assert sorted(calls, key=len) == [{}, {}, {"cmdstat_evalsha": 2}], calls
    finally:
        for node in nodes:
            node.close()
