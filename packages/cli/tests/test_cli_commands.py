"""chat-store commands in-process over json://, memory:// and a fake rawlist:// backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llama_index.storage.chat_store.core import (
    ChatMessage,
    chat_store_from_url,
    message_to_json,
)
from llama_index.storage.chat_store.testing import (
    HOSTILE_KEYS,
    every_block_type,
    numbered,
    tricky_messages,
)
from llama_index.storage.chat_store.testing.samples import (
    LLAMA_INDEX_INSTALLED,
)

from .conftest import Run

URL = Callable[[str], str]


def _fill(url: str, conversations: dict[str, list[ChatMessage]]) -> None:
    with chat_store_from_url(url) as store:
        for key, messages in conversations.items():
            store.add_messages(key, messages)


def _contents(url: str) -> dict[str, list[str]]:
    with chat_store_from_url(url) as store:
        return {k: [message_to_json(m) for m in store.get_messages(k)] for k in store.get_keys()}


def _sample() -> dict[str, list[ChatMessage]]:
    data = {key: numbered(3, prefix=f"{i}-") for i, key in enumerate(HOSTILE_KEYS)}
    data["blocks"] = every_block_type()
    data["tricky"] = tricky_messages()
    return data


# -- keys / show / count ---------------------------------------------------------------------


def test_keys_lists_every_key_and_json_escapes_on_request(run: Run, json_url: URL) -> None:
    _fill(json_url("a"), _sample())
    plain = run("keys", json_url("a"))
    assert plain.code == 0
    escaped = run("keys", "--json", json_url("a"))
    assert [json.loads(line) for line in escaped.out.splitlines()] == list(_sample())
    assert plain.out == "".join(f"{k}\n" for k in _sample())


def test_show_prints_positions_roles_and_block_kinds(run: Run, json_url: URL) -> None:
    _fill(json_url("a"), _sample())
    shown = run("show", json_url("a"), "blocks")
    assert shown.code == 0
    lines = shown.out.split("\n")
    assert lines[:2] == ["[0] user: a", "    b"]
    assert "[1] user: <image>" in lines
    assert "[10] assistant: <tool_call>" in lines
    last = run("show", json_url("a"), "tricky", "--last", "2")
    # Without llama-index-core the last message is one of a later version (unknown types).
    later = "[6] critic: <hologram>\n    <text>\n"
    expected = "[4] assistant: <1 tool call(s)>\n[5] tool: result\n"
    assert last.out == (expected if LLAMA_INDEX_INSTALLED else "[5] tool: result\n" + later)


def test_show_json_prints_each_message_as_stored(run: Run, json_url: URL) -> None:
    _fill(json_url("a"), _sample())
    shown = run("show", json_url("a"), "tricky", "--json")
    assert shown.out.split("\n")[:-1] == [message_to_json(m) for m in tricky_messages()]
    assert run("show", json_url("a"), "tricky", "--json", "--last", "0").out == ""
    assert run("show", json_url("a"), "missing").out == ""


def test_count_one_key_and_all(run: Run, json_url: URL) -> None:
    _fill(json_url("a"), _sample())
    assert run("count", json_url("a"), "tricky").out == f"{len(tricky_messages())}\n"
    assert run("count", json_url("a"), "missing").out == "0\n"
    total = 3 * len(HOSTILE_KEYS) + 11 + len(tricky_messages())
    assert (
        run("count", json_url("a")).out
        == f"{total} messages in {len(HOSTILE_KEYS) + 2} conversations\n"
    )


# -- export / import -----------------------------------------------------------------------------


def test_export_then_import_reproduces_the_store_exactly(
    run: Run, json_url: URL, tmp_path: Path
) -> None:
    _fill(json_url("a"), _sample())
    dump = tmp_path / "dump.jsonl"
    exported = run("export", json_url("a"), "-o", str(dump))
    assert exported.code == 0
    total = sum(len(v) for v in _sample().values())
    assert f"exported {total} messages in {len(_sample())} conversations" in exported.err
    imported = run("import", json_url("b"), "-i", str(dump))
    assert imported.code == 0, imported.err
    assert "counts verified" in imported.err
    assert _contents(json_url("b")) == _contents(json_url("a"))
    again = tmp_path / "again.jsonl"
    run("export", json_url("b"), "-o", str(again))
    assert again.read_bytes() == dump.read_bytes()


def test_export_writes_to_stdout_and_only_the_keys_asked(run: Run, json_url: URL) -> None:
    _fill(json_url("a"), _sample())
    out = run("export", json_url("a"), "--keys", "tricky", "user/1", "absent", "tricky").out
    lines = out.split("\n")
    assert json.loads(lines[0]) == {"format": "llama-index-chat-store-dump", "version": 1}
    assert {json.loads(line)["key"] for line in lines[1:-2]} == {"tricky", "user/1"}
    assert json.loads(lines[-2]) == {"end": {"keys": 2, "messages": 3 + len(tricky_messages())}}


def test_import_into_memory_verifies_even_without_persistence(
    run: Run, json_url: URL, tmp_path: Path
) -> None:
    _fill(json_url("a"), _sample())
    run("export", json_url("a"), "-o", str(tmp_path / "d.jsonl"))
    result = run("import", "memory://", "-i", str(tmp_path / "d.jsonl"))
    assert result.code == 0
    assert "counts verified" in result.err


def test_import_refuses_keys_that_hold_messages_then_resume_and_replace(
    run: Run, json_url: URL, tmp_path: Path
) -> None:
    _fill(json_url("a"), _sample())
    dump = tmp_path / "d.jsonl"
    run("export", json_url("a"), "-o", str(dump))
    assert run("import", json_url("b"), "-i", str(dump)).code == 0
    refused = run("import", json_url("b"), "-i", str(dump))
    assert refused.code == 1
    assert refused.err.count("\n") == 1
    assert "already holds 3 messages; rerun with --resume" in refused.err
    assert run("import", json_url("b"), "-i", str(dump), "--resume").code == 0
    assert run("import", json_url("b"), "-i", str(dump), "--replace").code == 0
    assert _contents(json_url("b")) == _contents(json_url("a"))


def test_import_of_a_truncated_dump_fails_and_resume_completes_it_without_duplicates(
    run: Run, json_url: URL, tmp_path: Path
) -> None:
    _fill(json_url("a"), {f"k{i}": numbered(25, prefix=f"{i}-") for i in range(6)})
    dump = tmp_path / "d.jsonl"
    run("export", json_url("a"), "-o", str(dump))
    lines = dump.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:80]) + lines[80][:20])  # dies mid-line 81
    broken = run("import", json_url("b"), "-i", str(cut), "--batch", "10")
    assert broken.code == 1
    assert broken.err.startswith(f"chat-store: error: {cut} line 81: not JSON")
    partial = _contents(json_url("b"))
    assert 0 < sum(map(len, partial.values())) < 150
    assert run("import", json_url("b"), "-i", str(dump), "--batch", "10").code == 1
    resumed = run("import", json_url("b"), "-i", str(dump), "--batch", "10", "--resume")
    assert resumed.code == 0, resumed.err
    assert _contents(json_url("b")) == _contents(json_url("a"))


def test_import_resume_refuses_a_destination_that_differs(
    run: Run, json_url: URL, tmp_path: Path
) -> None:
    _fill(json_url("a"), {"k": numbered(5)})
    _fill(json_url("b"), {"k": numbered(2, prefix="other")})
    run("export", json_url("a"), "-o", str(tmp_path / "d.jsonl"))
    result = run("import", json_url("b"), "-i", str(tmp_path / "d.jsonl"), "--resume")
    assert result.code == 1
    assert "not a prefix of the dump: they differ at position 0; rerun with --replace" in result.err
    _fill(json_url("c"), {"k": numbered(9)})
    longer = run("import", json_url("c"), "-i", str(tmp_path / "d.jsonl"), "--resume")
    assert "holds 9 messages, more than the dump's 5 for it" in longer.err


def test_import_reads_stdin(
    run: Run, json_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import sys

    _fill(json_url("a"), {"k": numbered(3)})
    run("export", json_url("a"), "-o", str(tmp_path / "d.jsonl"))
    stdin = io.TextIOWrapper(io.BytesIO((tmp_path / "d.jsonl").read_bytes()))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert run("import", json_url("b")).code == 0
    assert _contents(json_url("b")) == _contents(json_url("a"))


# -- copy ------------------------------------------------------------------------------------------


def test_copy_reproduces_the_store_and_copying_again_changes_nothing(
    run: Run, json_url: URL
) -> None:
    _fill(json_url("a"), _sample())
    first = run("copy", json_url("a"), json_url("b"), "--batch", "2")
    assert first.code == 0, first.err
    assert _contents(json_url("b")) == _contents(json_url("a"))
    second = run("copy", json_url("a"), json_url("b"))
    assert second.code == 0
    assert f"({len(_sample())} were complete already); counts verified" in second.err
    assert _contents(json_url("b")) == _contents(json_url("a"))


def test_copy_only_the_keys_asked(run: Run, json_url: URL) -> None:
    _fill(json_url("a"), _sample())
    assert run("copy", json_url("a"), json_url("b"), "--keys", "tricky", "absent").code == 0
    assert list(_contents(json_url("b"))) == ["tricky"]


def test_copy_resumes_a_partial_destination_and_refuses_without_resume(
    run: Run, json_url: URL
) -> None:
    source = {f"k{i}": numbered(40, prefix=f"{i}-") for i in range(3)}
    _fill(json_url("a"), source)
    # What an interrupted copy leaves: k0 complete, k1 a prefix of whole batches, k2 absent.
    _fill(json_url("b"), {"k0": source["k0"], "k1": source["k1"][:20]})
    refused = run("copy", json_url("a"), json_url("b"))
    assert refused.code == 1
    assert "key 'k1' already holds 20 of the 40 messages" in refused.err
    assert "rerun with --resume to continue it" in refused.err
    resumed = run("copy", json_url("a"), json_url("b"), "--resume")
    assert resumed.code == 0, resumed.err
    assert "copied 60 messages in 3 conversations (1 were complete already)" in resumed.err
    assert _contents(json_url("b")) == _contents(json_url("a"))


def test_copy_refuses_a_conflicting_destination_unless_replace(run: Run, json_url: URL) -> None:
    _fill(json_url("a"), {"k": numbered(4)})
    _fill(json_url("b"), {"k": numbered(2, prefix="x")})
    for flags in ([], ["--resume"]):
        result = run("copy", json_url("a"), json_url("b"), *flags)
        assert result.code == 1
        assert "rerun with --replace" in result.err
    assert run("copy", json_url("a"), json_url("b"), "--replace").code == 0
    assert _contents(json_url("b")) == _contents(json_url("a"))


# -- adopt / check (the fake rawlist:// backend keeps raw text, so entries can be corrupted) -------


def test_adopt_calls_the_store_or_explains(run: Run, rawlist: type, json_url: URL) -> None:
    _fill("rawlist://a", {"k1": numbered(1), "k2": numbered(1)})
    assert run("adopt", "rawlist://a").err == "adopted 2 keys\n"
    refused = run("adopt", json_url("a"))
    assert refused.code == 1
    assert "JsonFileChatStore has nothing to adopt" in refused.err


def test_check_reports_key_and_position_and_repair_moves_entries_aside(
    run: Run, rawlist: type, tmp_path: Path
) -> None:
    _fill("rawlist://a", {"good": numbered(3), "bad/key": numbered(7)})
    rawlist.raw["a"]["bad/key"][2] = '{"role": "user", "blocks": 42}'
    rawlist.raw["a"]["bad/key"][5] = b"\xff not even text".decode("latin-1")
    found = run("check", "rawlist://a", "--batch", "3")
    assert found.code == 1
    lines = found.out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        'key "bad/key" position 2',
        'key "bad/key" position 5',
    ]
    assert "2 corrupt entries in 2 conversations; rerun with --repair" in found.err
    aside = tmp_path / "aside.jsonl"
    repaired = run("check", "rawlist://a", "--repair", "--aside", str(aside))
    assert repaired.code == 0, repaired.err
    assert f"moved 2 corrupt entries of 2 conversations aside to {aside}" in repaired.err
    records = [json.loads(line) for line in aside.read_text(encoding="utf-8").splitlines()]
    assert [(r["key"], r["position"]) for r in records] == [("bad/key", 2), ("bad/key", 5)]
    assert records[0]["data"] == '{"role": "user", "blocks": 42}'
    assert [m.content for m in chat_store_from_url("rawlist://a").get_messages("bad/key")] == [
        "m0",
        "m1",
        "m3",
        "m4",
        "m6",
    ]
    clean = run("check", "rawlist://a")
    assert clean.code == 0
    assert "checked 2 conversations: no corrupt entries" in clean.err


def test_check_of_a_corrupt_file_is_one_line(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"store": {"k": [{"blocks": 3}]}}', encoding="utf-8")
    result = run("check", f"json://{path}")
    assert result.code == 1
    assert result.err.startswith(f"chat-store: error: {path} is not a chat store file")
    assert result.err.count("\n") == 1


# -- errors and help -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "error"),
    [
        # Backends the CLI's test environment does not install (it has redis and postgres).
        ("dynamodb://us-east-1/table", "pip install llama-index-storage-chat-store-dynamodb"),
        ("azuretable://acct:secret@h/t", "pip install llama-index-storage-chat-store-azure"),
        ("nosuch://x", "no installed distribution handles URL scheme 'nosuch'"),
        ("not a url", "is not a chat store URL"),
        ("json://relative/path.json", "takes a URL like 'json:///absolute/path"),
    ],
)
def test_bad_urls_give_one_line_errors(run: Run, url: str, error: str) -> None:
    for argv in (["keys", url], ["copy", "memory://", url], ["count", url, "k"]):
        result = run(*argv)
        assert result.code == 1
        assert result.err.startswith("chat-store: error: ")
        assert error in result.err
        assert result.err.count("\n") == 1
        assert "secret" not in result.err


@pytest.mark.parametrize(
    "command",
    [[], ["keys"], ["show"], ["count"], ["export"], ["import"], ["copy"], ["adopt"], ["check"]],
)
def test_help_everywhere(run: Run, command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.code == 0
    assert result.out.startswith("usage: chat-store")


def test_usage_errors_exit_2(run: Run) -> None:
    assert run().code == 2
    assert run("copy", "memory://").code == 2
    assert run("import", "memory://", "--resume", "--replace").code == 2
    assert run("show", "memory://", "k", "--last", "-1").code == 2
    assert run("export", "memory://", "--batch", "0").code == 2


def test_copy_reports_conversations_written_to_during_the_copy() -> None:
    from llama_index.storage.chat_store.cli._progress import Progress
    from llama_index.storage.chat_store.cli._transfer import Existing, copy_store
    from llama_index.storage.chat_store.core import SimpleChatStore

    class BusySource(SimpleChatStore):
        """A source another writer appends to right after the copy read its last page."""

        def get_messages(
            self, key: str, *, offset: int = 0, limit: int | None = None
        ) -> list[ChatMessage]:
            page = super().get_messages(key, offset=offset, limit=limit)
            if key == "busy" and not page:
                self.add_message(key, ChatMessage(content="late"))
            return page

    src, dst = BusySource(), SimpleChatStore()
    src.add_messages("calm", numbered(3))
    src.add_messages("busy", numbered(3))
    summary = copy_store(
        src, dst, keys=None, existing=Existing.ERROR, batch=3, progress=Progress("t", quiet=True)
    )
    assert summary.mismatched == ["busy"]


def test_keys_pages_by_prefix_after_and_limit_from_keys_and_counts(run: Run, rawlist: type) -> None:
    # A store without a catalog: the command sorts the keys and counts each conversation.
    one = [ChatMessage(role="user", content="x")]
    _fill("rawlist://a", {"b/2": _sample()["blocks"], "b/1": one, "a/1": one})
    first = run("keys", "rawlist://a", "--prefix", "b/", "--limit", "1")
    assert (first.code, first.out) == (0, "b/1\n")
    assert first.err == 'more: --after "b/1"\n'
    rest = run("keys", "rawlist://a", "--prefix", "b/", "--after", "b/1", "--long")
    key, count, created, updated, metadata = rest.out.rstrip("\n").split("\t")
    assert (key, count, created, updated, metadata) == (
        "b/2",
        str(len(_sample()["blocks"])),
        "-",
        "-",
        "{}",
    )
    assert rest.err == ""
    assert run("keys", "rawlist://a", "--limit", "0").code == 2


def test_keys_long_listing_reads_the_json_store_catalog(run: Run, json_url: URL) -> None:
    _fill(json_url("a"), {"k": [ChatMessage(role="user", content="x")]})
    with chat_store_from_url(json_url("a")) as store:
        store.set_metadata("k", {"t": 1})
    key, count, created, updated, metadata = run("keys", json_url("a"), "--long").out.split("\t")
    assert (key, count, metadata) == ("k", "1", '{"t": 1}\n')
    assert "-" not in (created, updated)
