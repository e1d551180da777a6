"""The harness finds declarations in the tree, measures, and writes the table and the chart."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from llama_index.storage.chat_store.bench import sample_messages
from llama_index.storage.chat_store.bench._adapters import count_steps
from llama_index.storage.chat_store.bench._cli import declarations, find_root, main
from llama_index.storage.chat_store.bench._ops import catalog_key, conversation
from llama_index.storage.chat_store.bench._report import _interval
from llama_index.storage.chat_store.bench._run import Plan
from llama_index.storage.chat_store.core import (
    ChatMessage,
    SimpleChatStore,
    message_from_json,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import Change, PlannedChatStore
from llama_index.storage.chat_store.core.backend import Plan as StorePlan
from llama_index.storage.chat_store.core.messages import messages_from_json

# A backend declared the way an integration would, in a workspace laid out like ours.
DECLARATION = """
from contextlib import nullcontext

from llama_index.storage.chat_store.bench import Backend
from llama_index.storage.chat_store.bench.backends.simple_bench import DictOfJsonStrings
from llama_index.storage.chat_store.core import SimpleChatStore

BENCH = Backend(
    title="a test backend",
    server=lambda: nullcontext("memory://"),
    ours=lambda url: SimpleChatStore(),
    raw=lambda url: DictOfJsonStrings(),
    reference=None,
    notes=["declared in a temporary workspace"],
    long_conversation=5_000,
)
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("[tool.uv.workspace]\nmembers = []\n")
    bench = tmp_path / "integrations" / "toy" / "bench"
    bench.mkdir(parents=True)
    (bench / "toy_bench.py").write_text(DECLARATION)
    return tmp_path


# A benchmark that is not a backend, declared by a package the way packages/cli does.
TASK = """
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Echo:
    def run(self, scale):
        return f"# echo\\n\\nran at BENCH_SCALE={scale:g}\\n"

BENCH = Echo()
"""


def test_plan_scales_every_volume() -> None:
    full = Plan.from_scale(1, 15)
    assert (full.lengths, full.volumes) == ((10, 10_000), (1_000, 100_000))
    quick = Plan.from_scale(0.01, 15)
    assert (quick.lengths, quick.volumes) == ((10, 100), (10, 1_000))
    assert Plan.from_scale(0.0001, 3).lengths == (10,)
    assert Plan.from_scale(1, 15, long_conversation=2_000).lengths == (10, 2_000)
    assert full.turn_lengths == (10, 1_000, 10_000)
    assert quick.turn_lengths == (10, 100)
    assert full.catalogs == (1_000, 10_000, 100_000)
    assert quick.catalogs == (10, 100, 1_000)
    assert Plan.from_scale(1, 15, largest_catalog=5_000).catalogs == (1_000, 5_000)


def test_operations_can_be_selected() -> None:
    plan = Plan.from_scale(1, 15, ops=("turn",))
    assert plan.conversation_lengths() == [10, 1_000, 10_000]
    assert plan.operations_at(10_000) == ["turn"]
    assert Plan.from_scale(1, 15).operations_at(10_000)[-1] == "turn"
    with pytest.raises(ValueError, match="unknown operation"):
        Plan.from_scale(1, 15, ops=("tunr",))


def test_declarations_come_from_the_tree(workspace: Path) -> None:
    assert find_root(workspace / "integrations" / "toy") == workspace
    found = declarations(workspace)
    assert list(found) == ["simple", "toy"]
    assert found["toy"] == workspace / "integrations" / "toy" / "bench" / "toy_bench.py"


def test_a_package_task_is_found_run_and_its_report_written(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = workspace / "packages" / "echo" / "bench"
    bench.mkdir(parents=True)
    (bench / "echo_bench.py").write_text(TASK)
    assert list(declarations(workspace)) == ["simple", "toy", "echo"]
    out = workspace / "results"
    assert main(["echo", "--root", str(workspace), "--out", str(out), "--scale", "0.5"]) == 0
    assert (out / "echo.md").read_text() == "# echo\n\nran at BENCH_SCALE=0.5\n"
    assert "ran at BENCH_SCALE=0.5" in capsys.readouterr().out


def test_two_declarations_with_one_name_are_refused(workspace: Path) -> None:
    other = workspace / "integrations" / "other" / "bench"
    other.mkdir(parents=True)
    (other / "toy_bench.py").write_text(DECLARATION)
    with pytest.raises(SystemExit, match="two benchmark declarations named 'toy'"):
        declarations(workspace)


def test_a_declared_backend_gets_its_table_and_chart(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = workspace / "results"
    code = main(["toy", "--root", str(workspace), "--out", str(out), "--scale", "0.01",
                 "--repeats", "5"])  # fmt: skip
    assert code == 0
    table = (out / "toy.md").read_text()
    assert "BENCH_SCALE=0.01" in table
    number = r"[\d.]+ µs"
    ratio = r"[\d.]+x \([\d.]+-[\d.]+\)"  # with its bootstrap interval
    row = rf"\| add_message \| 50 \| {number} \| {number} \| — \| {ratio} \| — \|"
    assert re.search(row, table)
    assert "| persist | 1,000 |" in table  # SimpleChatStore and the dict floor both persist
    # The turn: ours through ChatMemoryBuffer; the floor has no turn, and no reference here.
    assert re.search(rf"\| chat turn \(ChatMemoryBuffer\) \| 10 \| {number} \| — \| — \|", table)
    # The tool-safe window beside the plain one; the floor's is its plain read.
    timing = r"[\d.]+ (?:µs|ms|s)"
    safe = rf"\| get_messages \(last 20, tool_safe\) \| 50 \| {timing} \| {timing} \| — \|"
    assert re.search(safe, table)
    assert re.search(rf"Ours tool-safe over ours plain: {ratio} at 10 messages; ", table)
    # The catalog: its own table, by number of conversations, the floor beside ours.
    assert "| operation | conversations | ours | raw floor | LlamaIndex get_keys() |" in table
    for n in ("10", "100", "1,000"):
        page = rf"\| first page of 100 conversations \| {n} \| {timing} \| {timing} \| — \|"
        assert re.search(page, table), n
    assert "declared in a temporary workspace" in table
    assert (out / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in capsys.readouterr().out


def test_the_ratio_interval_brackets_the_ratio_and_narrows_with_agreement() -> None:
    slow = [2.0 + 0.01 * i for i in range(21)]
    fast = [1.0 + 0.005 * i for i in range(21)]
    low, high = _interval(slow, fast)
    assert low <= 2.0 <= high
    assert high - low < 0.2
    noisy = [1.0 + 0.5 * (i % 2) for i in range(21)]
    low, high = _interval(noisy, fast)
    assert high - low > 0.2


def test_a_reference_that_cannot_hold_the_conversations_is_left_out(workspace: Path) -> None:
    declaration = DECLARATION.replace(
        "reference=None,",
        "reference=Reference(requirements=['no-such-package==0'], source=''),\n"
        "    reference_holds=5,",
    ).replace("import Backend", "import Backend, Reference")
    (workspace / "integrations" / "toy" / "bench" / "toy_bench.py").write_text(declaration)
    out = workspace / "results"
    code = main(["toy", "--root", str(workspace), "--out", str(out), "--scale", "0.01",
                 "--repeats", "1"])  # fmt: skip
    assert code == 0  # the reference interpreter (an uninstallable one) was never built
    table = (out / "toy.md").read_text()
    assert "cannot hold 10 messages, left out of this run" in table
    assert "| add_message | 50 |" in table


def test_a_run_of_some_operations_gets_its_own_table(workspace: Path) -> None:
    out = workspace / "results"
    code = main(["toy", "--root", str(workspace), "--out", str(out), "--scale", "0.01",
                 "--repeats", "1", "--ops", "turn"])  # fmt: skip
    assert code == 0
    assert not (out / "toy.md").exists()  # a full run's table is never overwritten
    table = (out / "toy-turn.md").read_text()
    assert "BENCH_SCALE=0.01: chat turns on conversations of 10, 100 messages. Median" in table
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")][1:] == [
        "| chat turn (ChatMemoryBuffer)"
    ] * 2


def test_a_failing_backend_fails_the_run_but_not_the_others(workspace: Path) -> None:
    broken = workspace / "integrations" / "broken" / "bench"
    broken.mkdir(parents=True)
    (broken / "broken_bench.py").write_text("BENCH = 'not a Backend'\n")
    out = workspace / "results"
    code = main(["broken", "toy", "--root", str(workspace), "--out", str(out), "--scale", "0.001",
                 "--repeats", "1"])  # fmt: skip
    assert code == 1
    assert (out / "toy.md").exists()
    assert not (out / "broken.md").exists()


def test_simple_rows_run_beside_llama_index(tmp_path: Path) -> None:
    """The real thing at a tiny scale: our store, the floor and LlamaIndex's, one table."""
    code = main(["simple", "--out", str(tmp_path), "--scale", "0.001", "--repeats", "2"])
    assert code == 0
    table = (tmp_path / "simple.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| get_messages (all) |")]
    assert rows
    assert all("—" not in row for row in rows), rows  # all three implementations measured
    turns = [line.split(" | ") for line in table.splitlines() if line.startswith("| chat turn")]
    assert [row[1] for row in turns] == ["10"]  # 10, 1,000 and 10,000 scaled, never below 10
    assert all(row[2] != "—" and row[4] != "—" for row in turns), turns  # ours and LlamaIndex
    assert "llama-index-core==0.14.25" in table


def test_a_quick_run_takes_fewer_repeats(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below BENCH_SCALE=0.1 the default is 3 repeats; from 0.1 on, every one of the 15.

    If this fails: a quick run pays for the full run's repeats (issue 18), or a run meant to
    be read lost its repeats.
    """
    monkeypatch.delenv("BENCH_REPEATS", raising=False)
    out = workspace / "results"
    for scale, repeats in (("0.01", 3), ("0.1", 15)):
        code = main(["toy", "--root", str(workspace), "--out", str(out), "--scale", scale,
                     "--ops", "count"])  # fmt: skip
        assert code == 0
        assert f"Median of {repeats} interleaved repeats" in (out / "toy-count.md").read_text()


SLOW = """
import time
from contextlib import nullcontext

from llama_index.storage.chat_store.bench import Backend
from llama_index.storage.chat_store.core import SimpleChatStore

CALLS = []


class SlowStore(SimpleChatStore):
    def add_message(self, key, message, idx=None):
        CALLS.append(time.sleep(SECONDS))
        super().add_message(key, message, idx)


BENCH = Backend(
    title="an append of SECONDS",
    server=lambda: nullcontext("memory://"),
    ours=lambda url: SlowStore(),
    raw=None,
    reference=None,
    long_conversation=10,
)
"""


def test_a_slow_call_is_not_preceded_by_an_untimed_one(workspace: Path) -> None:
    """After a sample of 0.5 s or more the next one skips its untimed call.

    If this fails: long calls are made twice per sample (a full run's LlamaIndex appends to
    long conversations, a quick run on a slow emulator) for a wake-up cost under 1 % of them.
    """
    # One call per round: the warm-up round (untimed, once) and rounds 1 and 2 (after 0.5 s).
    assert _appends(workspace, SLOW.replace("SECONDS", "0.5"), scale="0.1") == 3


@pytest.mark.parametrize(
    ("scale", "seconds", "calls"), [("0.1", "0", 5), ("0.01", "0", 2), ("0.01", "0.5", 1)]
)
def test_a_quick_run_makes_no_warm_up_calls(
    workspace: Path, scale: str, seconds: str, calls: int
) -> None:
    """A run to read warms up (round 0, an untimed call before each timed one); a quick one not.

    And a quick run makes a call of 0.5 s or more once. If this fails: a quick run (below
    BENCH_SCALE=0.1) pays for warm-ups and repeats its numbers are not read for (issue 18: it
    must stay under 3 minutes), or a run to read lost them.
    """
    assert _appends(workspace, SLOW.replace("SECONDS", seconds), scale=scale) == calls


def _appends(workspace: Path, declaration: str, scale: str) -> int:
    """Run ``--ops add`` twice over ``declaration`` at ``scale``; return its store's appends."""
    bench = workspace / "integrations" / "slow" / "bench"
    bench.mkdir(parents=True)
    (bench / "slow_bench.py").write_text(declaration)
    out = workspace / "results"
    code = main(["slow", "--root", str(workspace), "--out", str(out), "--scale", scale,
                 "--repeats", "2", "--ops", "add"])  # fmt: skip
    assert code == 0
    return len(sys.modules["chat_store_bench_slow"].CALLS)


def test_a_run_writes_to_scratch_unless_asked_to_update_the_results(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``--update-results`` the committed tables in bench/results/ stay as they are.

    If this fails: a quick run overwrites the full-scale results (issue 18).
    """
    quick = ["toy", "--root", str(workspace), "--scale", "0.001", "--repeats", "1", "--ops", "add"]
    assert main(quick) == 0
    scratch = workspace / "bench" / "scratch"
    assert (scratch / "toy-add.md").exists()
    assert not (workspace / "bench" / "results").exists()
    out = capsys.readouterr().out
    assert f"results written to {scratch} (a scratch folder; --update-results writes " in out
    assert main([*quick, "--update-results"]) == 0
    assert (workspace / "bench" / "results" / "toy-add.md").exists()
    with pytest.raises(SystemExit):
        main([*quick, "--update-results", "--out", str(workspace / "elsewhere")])


FILLED_BY_ITS_HOOK = """
from contextlib import nullcontext

from llama_index.storage.chat_store.bench import Backend
from llama_index.storage.chat_store.core import SimpleChatStore

FILLED = []


def fill_catalog(store, keys, message):
    FILLED.append((store, list(keys)))
    for key in keys:
        store.add_message(key, message)


BENCH = Backend(
    title="a catalog filled by its hook",
    server=lambda: nullcontext("memory://"),
    ours=lambda url: SimpleChatStore(),
    raw=None,
    reference=None,
    fill_catalog=fill_catalog,
    largest_catalog=2_000,
)
"""


def test_a_catalog_grows_through_the_declared_fill_and_is_removed(workspace: Path) -> None:
    """The catalog is filled by the declaration's hook, grown size by size, then emptied.

    If this fails: a backend's fast fill is not used (a full run fills 100,000 conversations
    one call at a time), sizes are filled again from nothing, or a run leaves its catalog on
    the server.
    """
    bench = workspace / "integrations" / "hooked" / "bench"
    bench.mkdir(parents=True)
    (bench / "hooked_bench.py").write_text(FILLED_BY_ITS_HOOK)
    out = workspace / "results"
    code = main(["hooked", "--root", str(workspace), "--out", str(out), "--scale", "0.01",
                 "--repeats", "1", "--ops", "list_page"])  # fmt: skip
    assert code == 0
    filled = sys.modules["chat_store_bench_hooked"].FILLED
    assert [len(keys) for _, keys in filled] == [10, 10]  # 1,000 then 2,000 (largest), scaled
    assert [key for _, keys in filled for key in keys] == [catalog_key(i) for i in range(20)]
    store = filled[0][0]
    assert all(s is store for s, _ in filled)
    assert store.get_keys() == []
    table = (out / "hooked-list_page.md").read_text()
    rows = [line.split(" | ")[1] for line in table.splitlines() if line.startswith("| first page")]
    assert rows == ["10", "20"]


def test_the_last_20_start_inside_a_tool_exchange() -> None:
    """Every conversation is laid out so that a tool-safe last 20 widens back over a result.

    If this fails: the tool-safe row measures a window that needs no widening.
    """
    messages = [message_from_json(m) for m in sample_messages()]
    for n in (30, 100, 10_000):
        store = SimpleChatStore()
        store.set_messages("k", [messages[i % len(messages)] for i in conversation(n)])
        plain = store.get_messages("k", offset=-20)
        safe = store.get_messages("k", offset=-20, tool_safe=True)
        assert plain[0].role == "tool"
        assert len(safe) == 22
        assert safe[0].additional_kwargs["tool_calls"]
        assert safe[2:] == plain


def _message(role: str, **kwargs: Any) -> ChatMessage:
    return message_from_json(json.dumps({"role": role, "additional_kwargs": kwargs, "blocks": []}))


class OneListAStepStore(PlannedChatStore):
    """A store on the backend kit whose server is a dict in this process: one step per read."""

    lists: dict[str, list[str]] = {}

    def _execute(self, step: tuple[str, str, list[str]]) -> Any:
        verb, key, items = step
        if verb == "write":
            self.lists[key] = items
        return list(self.lists.get(key, []))

    def _get_plan(self, key: str, offset: int, limit: int | None) -> StorePlan[list[ChatMessage]]:
        items = yield ("read", key, [])
        start = range(len(items))[offset:].start if items else 0
        part = items[start:] if limit is None else items[start:][:limit]
        return messages_from_json(part, key=key, start=start)

    def _count_plan(self, key: str) -> StorePlan[int]:
        return len((yield ("read", key, [])))

    def _set_plan(self, key: str, messages: list[ChatMessage], change: Change) -> StorePlan[None]:
        yield ("write", key, [message_to_json(m) for m in messages])

    def _unused(self, *args: Any) -> Any:
        raise NotImplementedError("not used by these tests")

    _add_plan = _delete_all_plan = _delete_at_plan = _oldest_plan = _unused
    _keys_plan = _clear_plan = _unused


def test_round_trips_are_the_steps_the_store_sends() -> None:
    """``count_steps`` counts each step a planned store executes for one call.

    If this fails: the report's round trips per call (the tool-safe read's extra one, the
    catalog page's) are not what the store sent.
    """
    store = OneListAStepStore()
    call = _message("assistant", tool_calls=[{"id": "c"}])
    results = [_message("tool", tool_call_id="c") for _ in range(10)]
    store.set_messages("chat", [_message("user"), call, *results, *map(_message, ["user"] * 18)])
    assert count_steps(store, lambda: store.get_messages("chat", offset=-20)) == 1
    assert count_steps(store, lambda: store.get_messages("chat", offset=-5, tool_safe=True)) == 1
    # The last 20 start deep in a run of 10 results: the first read (4 more) ends inside it.
    assert count_steps(store, lambda: store.get_messages("chat", offset=-20, tool_safe=True)) == 2
    assert count_steps(SimpleChatStore(), lambda: None) is None
