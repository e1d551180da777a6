"""LlamaIndex's own PostgresChatStore 0.5.0 and ours share one table, both directions.

LlamaIndex runs in the reference environment (a subprocess) against the same real server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import pytest

from llama_index.storage.chat_store.core import ChatMessage, message_from_json, message_to_json
from llama_index.storage.chat_store.postgres import PostgresChatStore
from llama_index.storage.chat_store.testing.services import ReferencePython

REQUIREMENT = "llama-index-storage-chat-store-postgres==0.5.0"

LLAMA_INDEX_WRITES = """
import json, sys
from llama_index.core.llms import ChatMessage
from llama_index.storage.chat_store.postgres import PostgresChatStore
host, port, db, table, *targets = sys.argv[1:]
out = {}
for target in targets:
  schema, jsonb = target.split(":")
  store = PostgresChatStore.from_params(host=host, port=port, database=db, user="test",
      password="x", schema_name=schema, table_name=table, use_jsonb=jsonb == "1")
  messages = [
      ChatMessage(role="system", content="Be brief. Ünïcödé ✓"),
      ChatMessage(role="user", content="hi", additional_kwargs={"n": 1.5, "nested": {"a": [1]}}),
      ChatMessage(role="assistant", content=None,
                  additional_kwargs={"tool_calls": [{"id": "c1", "type": "function"}]}),
  ]
  store.set_messages("u1", messages)
  store.add_message("u2", ChatMessage(role="user", content="second key"))
  out[schema] = {"u1": [m.model_dump_json() for m in messages]}
print(json.dumps(out))
"""

LLAMA_INDEX_READS = """
import json, sys
from llama_index.storage.chat_store.postgres import PostgresChatStore
host, port, db, table, *targets = sys.argv[1:]
out = {}
for target in targets:
  schema, jsonb = target.split(":")
  store = PostgresChatStore.from_params(host=host, port=port, database=db, user="test",
      password="x", schema_name=schema, table_name=table, use_jsonb=jsonb == "1")
  out[schema] = {key: [m.model_dump_json() for m in store.get_messages(key)]
                 for key in sorted(store.get_keys())}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def reference(
    llama_index_reference: Callable[[Sequence[str]], ReferencePython],
) -> ReferencePython:
    return llama_index_reference([REQUIREMENT])


def _args(url: str, table: str, schemas: dict[str, bool]) -> list[str]:
    parts = urlsplit(url)
    targets = [f"{schema}:{int(jsonb)}" for schema, jsonb in schemas.items()]
    return [str(parts.hostname), str(parts.port), parts.path.lstrip("/"), table, *targets]


def _same(ours: list[ChatMessage], theirs: list[str]) -> None:
    # JSONB reorders object keys, so compare what each side means, not its bytes.
    assert [message_to_json(m) for m in ours] == [
        message_to_json(message_from_json(t)) for t in theirs
    ]


def _change_with_ours(url: str, schema: str, written: dict[str, list[str]], jsonb: bool) -> None:
    with PostgresChatStore.from_uri(url, schema_name=schema) as ours:
        u1 = ours.get_messages("u1")
        _same(u1, written["u1"])
        if not jsonb:  # JSON keeps LlamaIndex's bytes, so the round trip is byte-identical
            assert [message_to_json(m) for m in u1] == written["u1"]
        assert sorted(ours.get_keys()) == ["u1", "u2"]
        assert ours.count_messages("u1") == 3
        assert [m.content for m in ours.get_messages("u1", offset=-2, limit=1)] == ["hi"]

        ours.add_message("u1", ChatMessage(role="user", content="from ours"))
        ours.add_message("u1", ChatMessage(role="user", content="inserted"), idx=1)
        removed = ours.delete_message("u1", 0)
        assert removed is not None
        assert removed.content == "Be brief. Ünïcödé ✓"
        ours.set_messages("u3", [ChatMessage(role="assistant", content="ours only")])
        assert ours.delete_messages("u2") is not None


def test_both_directions(reference: ReferencePython, database_url_for_module: str) -> None:
    """Ours reads what LlamaIndex wrote (JSON[] and JSONB[]); LlamaIndex reads our changes."""
    schemas = {f"li_json_{uuid.uuid4().hex[:8]}": False, f"li_jsonb_{uuid.uuid4().hex[:8]}": True}
    args = _args(database_url_for_module, "chatstore", schemas)
    written = json.loads(reference.run(LLAMA_INDEX_WRITES, *args))
    for schema, jsonb in schemas.items():
        _change_with_ours(database_url_for_module, schema, written[schema], jsonb)

    seen = json.loads(reference.run(LLAMA_INDEX_READS, *args))
    for schema in schemas:
        assert sorted(seen[schema]) == ["u1", "u3"]
        assert [message_from_json(m).content for m in seen[schema]["u1"]] == [
            "inserted", "hi", None, "from ours",
        ]  # fmt: skip
        assert [message_from_json(m).content for m in seen[schema]["u3"]] == ["ours only"]

    # Our default layout never silently takes over LlamaIndex's table.
    schema = next(iter(schemas))
    with (
        PostgresChatStore.from_uri(
            database_url_for_module, schema_name=schema, layout="native"
        ) as ours,
        pytest.raises(ValueError, match="llama_index"),
    ):
        ours.get_messages("u1")
