"""The chat-store command against real servers: migration by copy, resuming a killed copy,
unreachable servers, check on Redis and PostgreSQL, adopt on Redis, and the PostgreSQL
LlamaIndex-layout migration.

Every test runs the installed console script in a subprocess, the way a user does. The source
is a JSON file store of 10,000 messages in 100 conversations (hostile keys, every block type);
each destination is an empty, isolated store (a Redis namespace, a PostgreSQL schema) on a server
from the tests-shared fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from llama_index.storage.chat_store.core import (
    ChatMessage,
    JsonFileChatStore,
    chat_store_from_url,
    message_to_json,
)
from llama_index.storage.chat_store.testing import (
    HOSTILE_KEYS,
    every_block_type,
    numbered,
    tricky_messages,
)
from llama_index.storage.chat_store.testing.services import free_port

CHAT_STORE = str(Path(sys.executable).parent / "chat-store")
KEYS, PER_KEY = 100, 100
TOTAL = KEYS * PER_KEY


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHAT_STORE, *argv], capture_output=True, text=True, timeout=300)


def _contents(url: str) -> dict[str, list[str]]:
    with chat_store_from_url(url) as store:
        return {k: [message_to_json(m) for m in store.get_messages(k)] for k in store.get_keys()}


def _counts(url: str) -> dict[str, int]:
    with chat_store_from_url(url) as store:
        return {k: store.count_messages(k) for k in store.get_keys()}


def _conversation(i: int) -> tuple[str, list[ChatMessage]]:
    key = HOSTILE_KEYS[i] if i < len(HOSTILE_KEYS) else f"conversation/{i} ü"
    if i % 10:
        return key, numbered(PER_KEY, prefix=f"{i}-")
    varied = tricky_messages() + every_block_type()
    return key, varied + numbered(PER_KEY - len(varied), prefix=f"{i}-")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """10,000 messages across 100 keys in a JSON file store, by URL."""
    path = tmp_path_factory.mktemp("source") / "chat_store.json"
    store = JsonFileChatStore(path=str(path))
    for i in range(KEYS):
        store.add_messages(*_conversation(i))
    assert sum(_counts(f"json://{path}").values()) == TOTAL
    return f"json://{path}"


def _redis_destination(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("redis_url")
    return f"{url}?namespace=cli-{uuid.uuid4().hex}:"


def _postgres_destination(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("postgres_url")
    return f"{url}?schema=cli_{uuid.uuid4().hex[:12]}"


DESTINATIONS: dict[str, Callable[[pytest.FixtureRequest], str]] = {
    "redis": _redis_destination,
    "postgres": _postgres_destination,
}


@pytest.fixture(params=sorted(DESTINATIONS))
def destination(request: pytest.FixtureRequest) -> str:
    """An empty, isolated store on a real server, by URL."""
    return DESTINATIONS[request.param](request)


def test_copy_of_10000_messages_ends_identical_and_a_second_copy_is_a_no_op(
    source: str, destination: str
) -> None:
    first = _run("copy", source, destination)
    assert first.returncode == 0, first.stderr
    assert first.stderr == f"copied {TOTAL} messages in {KEYS} conversations; counts verified\n"
    expected = _contents(source)
    assert _contents(destination) == expected

    again = _run("copy", source, destination)
    assert again.returncode == 0, again.stderr
    assert again.stderr == (
        f"copied 0 messages in {KEYS} conversations ({KEYS} were complete already); "
        "counts verified\n"
    )
    assert _contents(destination) == expected


def _partial(counts: dict[str, int], batch: int) -> list[str]:
    """Keys an interrupted copy left part-way, with at least two batches still to go."""
    return [key for key, n in counts.items() if 0 < n <= PER_KEY - 2 * batch]


def test_a_killed_copy_resumes_identical_without_duplicates(source: str, destination: str) -> None:
    batch = 7
    argv = ["copy", source, destination, "--batch", str(batch), "-q"]
    copy = subprocess.Popen([CHAT_STORE, *argv], stderr=subprocess.PIPE)
    try:
        # Freeze the copy to look at the destination; kill it once a conversation is half
        # written (a batch in flight when frozen may still land, hence two batches of margin).
        deadline = time.monotonic() + 120
        while True:
            assert copy.poll() is None, "the copy ended before it could be interrupted"
            assert time.monotonic() < deadline, "the copy never reached a half-written key"
            time.sleep(0.05)
            os.kill(copy.pid, signal.SIGSTOP)
            counts = _counts(destination)
            if sum(counts.values()) >= TOTAL // 4 and _partial(counts, batch):
                break
            os.kill(copy.pid, signal.SIGCONT)
        os.kill(copy.pid, signal.SIGKILL)
        assert copy.wait(timeout=60) == -signal.SIGKILL
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait()
        assert copy.stderr is not None
        copy.stderr.close()
    counts = _counts(destination)
    assert 0 < sum(counts.values()) < TOTAL
    assert _partial(counts, batch), counts

    # Without --resume the half-written conversation is refused, in one line.
    refused = _run(*argv)
    assert refused.returncode == 1
    assert refused.stderr.startswith("chat-store: error: destination key ")
    assert "rerun with --resume" in refused.stderr
    assert refused.stderr.count("\n") == 1

    resumed = _run(*argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.endswith("; counts verified\n")
    assert _counts(destination) == dict.fromkeys(_counts(source), PER_KEY)
    assert _contents(destination) == _contents(source)


def _history_that_ends_the_same(
    source: list[ChatMessage], have: int, differ: int
) -> list[ChatMessage]:
    """The first ``have`` messages of ``source`` with the one at ``differ`` replaced."""
    held = list(source[:have])
    held[differ] = ChatMessage(role="user", content=f"another conversation {differ}")
    return held


@pytest.mark.parametrize("command", ["copy", "import"])
def test_resume_refuses_a_destination_holding_another_history_that_ends_the_same(
    command: str, destination: str, tmp_path: Path
) -> None:
    # Each destination conversation ends with the very message the source holds at that
    # position, so only a check of every held position tells the histories apart.
    conversation = numbered(30)
    source = f"json://{tmp_path / 'source.json'}"
    with chat_store_from_url(source) as store:
        store.add_messages("k", conversation)
    dump = tmp_path / "dump.jsonl"
    assert _run("export", source, "-o", str(dump)).returncode == 0
    argv = {
        "copy": ["copy", source, destination],
        "import": ["import", destination, "-i", str(dump)],
    }[command]
    what = {"copy": "source conversation", "import": "dump"}[command]
    for have, differ in [(20, 0), (20, 13), (30, 28)]:
        with chat_store_from_url(destination) as store:
            store.set_messages("k", _history_that_ends_the_same(conversation, have, differ))
        before = _contents(destination)
        refused = _run(*argv, "--resume", "--batch", "4", "-q")
        assert refused.returncode == 1, (have, differ, refused.stderr)
        assert refused.stderr == (
            f"chat-store: error: destination key 'k' already holds {have} messages that are "
            f"not a prefix of the {what}: they differ at position {differ}; rerun with "
            "--replace to overwrite it\n"
        )
        assert _contents(destination) == before


def test_export_and_import_round_trip_through_the_server(
    source: str, destination: str, tmp_path: Path
) -> None:
    dump = tmp_path / "dump.jsonl"
    assert _run("export", source, "-o", str(dump)).returncode == 0
    imported = _run("import", destination, "-i", str(dump))
    assert imported.returncode == 0, imported.stderr
    assert _contents(destination) == _contents(source)
    back = tmp_path / "back.jsonl"
    assert _run("export", destination, "-o", str(back)).returncode == 0
    assert sorted(back.read_bytes().splitlines()) == sorted(dump.read_bytes().splitlines())


UNREACHABLE: dict[str, Callable[[int], str]] = {
    "redis": lambda port: f"redis://:hunter2secret@127.0.0.1:{port}/0",
    "postgres": lambda port: f"postgresql://u:hunter2secret@127.0.0.1:{port}/db?connect_timeout=2",
}


@pytest.mark.parametrize("scheme", sorted(UNREACHABLE))
@pytest.mark.parametrize("command", [["count"], ["keys"], ["export", "-q"]])
def test_an_unreachable_server_is_one_line_with_the_password_masked(
    scheme: str, command: list[str]
) -> None:
    port = free_port()
    result = _run(command[0], UNREACHABLE[scheme](port), *command[1:])
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("chat-store: error: ")
    assert result.stderr.count("\n") == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "***" in result.stderr
    assert "hunter2secret" not in result.stderr
    assert "Traceback" not in result.stderr


def _raw_lists(client: redis.Redis, namespace: str) -> list[bytes]:
    names = client.scan_iter(match=f"{namespace}*", count=1000)
    return [name for name in names if client.type(name) == b"list"]


GARBAGE = {"redis": "\x00 not a message", "postgres": '{"blocks": 3}'}


def _corrupt_redis(request: pytest.FixtureRequest, key: str, position: int) -> str:
    """A Redis store whose conversation ``key`` holds garbage at ``position``; its URL."""
    base: str = request.getfixturevalue("redis_url")
    namespace = f"check-{uuid.uuid4().hex}:"
    url = f"{base}?namespace={namespace}"
    with chat_store_from_url(url) as store:
        store.add_messages(key, numbered(5))
        store.add_messages("fine", numbered(3))
    client = redis.Redis.from_url(base)
    try:
        (raw,) = [n for n in _raw_lists(client, namespace) if n.endswith(key.encode())]
        client.lset(raw, position, GARBAGE["redis"])
    finally:
        client.close()
    return url


def _corrupt_postgres(request: pytest.FixtureRequest, key: str, position: int) -> str:
    """A PostgreSQL store (native layout) whose row at ``position`` of ``key`` is valid JSON but
    not a message; its URL."""
    base: str = request.getfixturevalue("postgres_url")
    schema = f"check_{uuid.uuid4().hex[:12]}"
    url = f"{base}?schema={schema}&table=messages"
    with chat_store_from_url(url) as store:
        store.add_messages(key, numbered(5))
        store.add_messages("fine", numbered(3))
    with psycopg.connect(base, autocommit=True) as conn:
        table = sql.Identifier(schema, "messages")
        updated = conn.execute(
            sql.SQL(
                "UPDATE {t} SET message = %s WHERE id = "
                "(SELECT id FROM {t} WHERE key = %s ORDER BY id OFFSET %s LIMIT 1)"
            ).format(t=table),
            [GARBAGE["postgres"], key, position],
        )
        assert updated.rowcount == 1
    return url


CORRUPT: dict[str, Callable[[pytest.FixtureRequest, str, int], str]] = {
    "redis": _corrupt_redis,
    "postgres": _corrupt_postgres,
}


@pytest.mark.parametrize("backend", sorted(CORRUPT))
def test_check_finds_and_repair_moves_aside_a_corrupt_entry(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = CORRUPT[backend](request, "conv", 3)

    found = _run("check", url, "-q")
    assert found.returncode == 1
    assert found.stdout.startswith('key "conv" position 3: ')
    assert found.stdout.count("\n") == 1
    assert found.stderr.startswith("chat-store: error: 1 corrupt entries in 2 conversations")

    aside = tmp_path / "aside.jsonl"
    repaired = _run("check", url, "-q", "--repair", "--aside", str(aside))
    assert repaired.returncode == 0, repaired.stderr
    (record,) = [json.loads(line) for line in aside.read_text(encoding="utf-8").splitlines()]
    assert (record["key"], record["position"]) == ("conv", 3)
    assert GARBAGE[backend].strip("\x00 ") in record["data"]
    with chat_store_from_url(url) as store:
        assert [m.content for m in store.get_messages("conv")] == ["m0", "m1", "m2", "m4"]
        assert store.count_messages("fine") == 3
    clean = _run("check", url, "-q")
    assert clean.returncode == 0, clean.stderr
    assert clean.stderr == "checked 2 conversations: no corrupt entries\n"


def test_copy_migrates_the_llama_index_postgres_layout_to_the_native_one(
    postgres_url: str,
) -> None:
    schema = f"migrate_{uuid.uuid4().hex[:12]}"
    old = f"{postgres_url}?schema={schema}&table=chatstore&layout=llama_index"
    with chat_store_from_url(old) as store:
        for i in range(20):
            store.add_messages(*_conversation(i))
    new = f"{postgres_url}?schema={schema}&table=messages&layout=native"
    result = _run("copy", old, new)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "copied 2000 messages in 20 conversations; counts verified\n"
    assert _contents(new) == _contents(old)


def test_adopt_registers_lists_written_in_llama_index_layout(redis_url: str) -> None:
    # LlamaIndex's RedisChatStore keeps a conversation as a LIST of message JSON at the raw key
    # (RPUSH per message) and no registry: our store cannot list such keys until adopted.
    namespace = f"adopt-{uuid.uuid4().hex}:"
    url = f"{redis_url}?namespace={namespace}"
    legacy = {"legacy/1": numbered(3), "legacy ü": tricky_messages()}
    client = redis.Redis.from_url(redis_url)
    try:
        for key, messages in legacy.items():
            client.rpush(f"{namespace}{key}", *(message_to_json(m) for m in messages))
    finally:
        client.close()
    assert _run("keys", url).stdout == ""

    adopted = _run("adopt", url)
    assert adopted.returncode == 0, adopted.stderr
    assert sorted(adopted.stdout.splitlines()) == sorted(legacy)
    assert adopted.stderr == "adopted 2 keys\n"
    assert sorted(_run("keys", url).stdout.splitlines()) == sorted(legacy)
    assert _contents(url) == {k: [message_to_json(m) for m in v] for k, v in legacy.items()}
    again = _run("adopt", url)  # harmless: the registry and the data stay as they are
    assert again.returncode == 0, again.stderr
    assert sorted(_run("keys", url).stdout.splitlines()) == sorted(legacy)
    assert _contents(url) == {k: [message_to_json(m) for m in v] for k, v in legacy.items()}


def test_keys_long_listing_reads_the_redis_catalog(redis_url: str) -> None:
    url = f"{redis_url}?namespace=cli-{uuid.uuid4().hex}:"
    store = chat_store_from_url(url)
    try:
        for key in ("u1/b", "u1/a", "u2/a"):
            store.add_message(key, ChatMessage(role="user", content=key))
        store.set_metadata("u1/a", {"title": "Trip"})
        listed = _run("keys", url, "--prefix", "u1/", "--long")
        assert listed.returncode == 0, listed.stderr
        rows = [line.split("\t") for line in listed.stdout.splitlines()]
        assert [(r[0], r[1], r[4]) for r in rows] == [
            ("u1/a", "1", '{"title": "Trip"}'),
            ("u1/b", "1", "{}"),
        ]
        assert all(r[2] != "-" and r[3] != "-" for r in rows)  # the catalog knows its times
        paged = _run("keys", url, "--limit", "2")
        assert (paged.stdout, paged.stderr) == ("u1/a\nu1/b\n", 'more: --after "u1/b"\n')
    finally:
        store.clear()
        store.close()
