"""The smart driver really balances, LlamaIndex's parameters reach it, LlamaIndex's table works."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import uuid
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg2
import pytest

from llama_index.storage.chat_store.core import ChatMessage, message_from_json
from llama_index.storage.chat_store.testing.services import ReferencePython
from llama_index.storage.chat_store.yugabytedb import YugabyteDBChatStore

REQUIREMENT = "llama-index-storage-chat-store-yugabytedb==0.3.0"


def _libpq(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql", query=""))


def _yb_servers_calls(url: str) -> int:
    with psycopg2.connect(_libpq(url)) as raw, raw.cursor() as cursor:
        cursor.execute("SELECT last_value, is_called FROM public.yb_servers_calls")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0]) if row[1] else 0


def test_load_balance_asks_the_cluster_for_its_servers(yugabytedb_url: str) -> None:
    """With load_balance=true and topology keys the driver calls yb_servers() before use."""
    url = yugabytedb_url + "&topology_keys=cloud1.datacenter1.rack1&yb_servers_refresh_interval=0"
    before = _yb_servers_calls(yugabytedb_url)
    with YugabyteDBChatStore.from_uri(url, schema_name=f"lb_{uuid.uuid4().hex[:8]}") as store:
        store.add_message("k", ChatMessage(content="balanced"))
        assert store.count_messages("k") == 1
    assert _yb_servers_calls(yugabytedb_url) > before


def test_from_params_carries_every_seed_parameter(yugabytedb_url: str) -> None:
    """from_params puts LlamaIndex's smart-driver parameters in the URL, and they connect."""
    parts = urlsplit(yugabytedb_url)
    store = YugabyteDBChatStore.from_params(
        host=parts.hostname, port=parts.port, database=parts.path.lstrip("/"), user="test",
        password="pw", load_balance=True, topology_keys="cloud1.datacenter1.rack1",
        yb_servers_refresh_interval=60, fallback_to_topology_keys_only=True,
        failed_host_ttl_seconds=3, schema_name=f"fp_{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    query = parse_qs(urlsplit(store.connection_string).query)
    assert query == {
        "load_balance": ["true"], "topology_keys": ["cloud1.datacenter1.rack1"],
        "yb_servers_refresh_interval": ["60"], "fallback_to_topology_keys_only": ["true"],
        "failed_host_ttl_seconds": ["3"],
    }  # fmt: skip
    store.add_message("k", ChatMessage(content="sync through the smart driver"))
    assert asyncio.run(store.aget_messages("k"))[0].content == "sync through the smart driver"
    assert store.to_dict()["class_name"] == "YugabyteDBChatStore"
    store.close()


def test_concurrent_first_use_without_advisory_locks(yugabytedb_url: str) -> None:
    """Stores racing to create one schema all succeed (IF NOT EXISTS plus one retry)."""
    schema = f"race_{uuid.uuid4().hex[:8]}"

    def first_use(i: int) -> None:
        with YugabyteDBChatStore.from_uri(yugabytedb_url, schema_name=schema) as store:
            store.add_message("k", ChatMessage(content=f"m{i}"))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(first_use, range(4)))
    with YugabyteDBChatStore.from_uri(yugabytedb_url, schema_name=schema) as store:
        assert store.count_messages("k") == 4


LLAMA_INDEX_WRITES = """
import json, sys
from llama_index.core.llms import ChatMessage
from llama_index.storage.chat_store.yugabytedb import YugabyteDBChatStore
url, schema = sys.argv[1:]
store = YugabyteDBChatStore.from_uri(url, schema_name=schema)
store.set_messages("u1", [ChatMessage(role="user", content="from llama ✓"),
                          ChatMessage(role="assistant", content="reply")])
print(json.dumps([m.model_dump_json() for m in store.get_messages("u1")]))
"""

LLAMA_INDEX_READS = """
import json, sys
from llama_index.storage.chat_store.yugabytedb import YugabyteDBChatStore
url, schema = sys.argv[1:]
store = YugabyteDBChatStore.from_uri(url, schema_name=schema)
print(json.dumps({k: [m.model_dump_json() for m in store.get_messages(k)]
                  for k in sorted(store.get_keys())}))
"""


def test_llama_index_yugabytedb_table_both_directions(
    llama_index_reference: Callable[[Sequence[str]], ReferencePython], yugabytedb_url: str
) -> None:
    """Ours reads LlamaIndex's data_<table> rows; LlamaIndex reads what ours changed."""
    reference = llama_index_reference([REQUIREMENT])
    parts = urlsplit(yugabytedb_url)
    url = urlunsplit(parts._replace(netloc=f"test:x@{parts.hostname}:{parts.port}"))
    schema = f"li_{uuid.uuid4().hex[:8]}"
    written = json.loads(reference.run(LLAMA_INDEX_WRITES, url, schema))
    with YugabyteDBChatStore.from_uri(yugabytedb_url, schema_name=schema) as ours:
        assert [m.content for m in ours.get_messages("u1")] == ["from llama ✓", "reply"]
        assert [m.content for m in map(message_from_json, written)] == ["from llama ✓", "reply"]
        ours.add_message("u1", ChatMessage(role="user", content="from ours"))
        assert ours.delete_message("u1", 1) is not None
        ours.add_messages("u2", [ChatMessage(content="new key")])
    seen = json.loads(reference.run(LLAMA_INDEX_READS, url, schema))
    assert {k: [message_from_json(m).content for m in v] for k, v in seen.items()} == {
        "u1": ["from llama ✓", "from ours"],
        "u2": ["new key"],
    }


@pytest.mark.parametrize("scheme", ["yugabytedb", "yugabytedb+psycopg2"])
def test_url_schemes(scheme: str, yugabytedb_url: str) -> None:
    """Both schemes build a store; the async DSN leaves the smart-driver options out."""
    url = urlunsplit(urlsplit(yugabytedb_url)._replace(scheme=scheme))
    with YugabyteDBChatStore.from_url(url, schema_name=f"u_{uuid.uuid4().hex[:8]}") as store:
        asyncio.run(store.aadd_message("k", ChatMessage(content="async")))
        assert store.get_messages("k")[0].content == "async"
