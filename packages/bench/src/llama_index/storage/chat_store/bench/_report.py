"""Write one backend's results: a markdown table and a latency chart beside it."""

from __future__ import annotations

import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from llama_index.storage.chat_store.bench._declare import is_quick
from llama_index.storage.chat_store.bench._ops import (
    CATALOG,
    OPERATIONS,
    PAGE,
    TURN,
    TURN_TOKEN_LIMIT,
    VOLUME_OPERATIONS,
)
from llama_index.storage.chat_store.bench._run import OPERATION_NAMES, Plan, Results

IMPLS = ("ours", "baseline", "raw", "llama_index")
COLORS = {"ours": "#1f77b4", "baseline": "#2ca02c", "raw": "#7f7f7f", "llama_index": "#d62728"}
SHORT = {"ours": "ours", "baseline": "baseline", "raw": "raw floor", "llama_index": "LlamaIndex"}


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _ratio(results: Results, a: str, b: str, op: str, n: int, op_b: str | None = None) -> str:
    """``a``'s median over ``b``'s (of ``op_b``, default ``op``), with a 90 % bootstrap interval.

    The interval only where both have five repeats or more.
    """
    top, bottom = results.samples.get((a, op, n)), results.samples.get((b, op_b or op, n))
    if not top or not bottom or statistics.median(bottom) <= 0:
        return "—"
    ratio = f"{statistics.median(top) / statistics.median(bottom):.2f}x"
    if min(len(top), len(bottom)) < 5:
        return ratio
    low, high = _interval(top, bottom)
    return f"{ratio} ({low:.2f}-{high:.2f})"


def _interval(top: list[float], bottom: list[float], draws: int = 1000) -> tuple[float, float]:
    # Percentile bootstrap of the ratio of medians; seeded, so a report is reproducible.
    rng = random.Random(0)
    ratios = sorted(
        statistics.median(rng.choices(top, k=len(top)))
        / statistics.median(rng.choices(bottom, k=len(bottom)))
        for _ in range(draws)
    )
    return ratios[int(draws * 0.05)], ratios[int(draws * 0.95) - 1]


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # not available on every platform
        return "unknown"


def _rows(results: Results) -> list[tuple[str, str, int]]:
    plan = results.plan
    rows = [(op, shown, n) for op, shown in OPERATIONS for n in plan.lengths]
    rows += [(TURN[0], TURN[1], n) for n in plan.turn_lengths]
    rows += [(op, shown, n) for op, shown in VOLUME_OPERATIONS for n in plan.volumes]
    return [row for row in rows if results.median("ours", row[0], row[2]) is not None]


def _catalog_rows(results: Results) -> list[tuple[str, str, int]]:
    rows = [(CATALOG[0], CATALOG[1], n) for n in results.plan.catalogs]
    return [row for row in rows if results.median("ours", row[0], row[2]) is not None]


def _conditions(results: Results, measured: set[str]) -> str:
    """Return the paragraph saying what was measured, and how."""
    plan = results.plan
    store_ops = measured - {TURN[0], "persist", "load", CATALOG[0]}
    scope = []
    if store_ops:
        scope.append(f"conversations of {' and '.join(f'{n:,}' for n in plan.lengths)} messages")
    if TURN[0] in measured:
        scope.append(
            f"chat turns on conversations of {', '.join(f'{n:,}' for n in plan.turn_lengths)}"
            " messages"
        )
    if "persist" in measured or "load" in measured:
        scope.append(f"persist/load of {' and '.join(f'{n:,}' for n in plan.volumes)} messages")
    if CATALOG[0] in measured:
        sizes = ", ".join(f"{n:,}" for n in plan.catalogs)
        scope.append(f"the first page of catalogs of {sizes} conversations")
    return (
        f"BENCH_SCALE={plan.scale:g}: {'; '.join(scope)}"
        + f". Median of {plan.repeats} interleaved repeats"
        + (
            f" ({plan.volume_repeats} for persist/load)"
            if "persist" in measured or "load" in measured
            else ""
        )
        + (
            ", without warm-up, a call of 0.5 s or more made once (a quick run checks the"
            " harness: its numbers are not for reading)"
            if is_quick(plan.scale)
            else ", after a warm-up round, each timed call right after an untimed one of the same"
            " operation (none after a call of 0.5 s or more)"
        )
        + ". Each implementation is timed in its own process around the call alone (LlamaIndex's"
        " store inside the reference interpreter, so no IPC is counted), against the same server"
        " in the same run. In brackets: a 90 % bootstrap interval of each ratio; where it holds"
        " 1.00, this run cannot tell the two apart."
    )


def _table(
    results: Results,
    impls: list[str],
    rows: list[tuple[str, str, int]],
    what: str = "messages",
    short: dict[str, str] = SHORT,
) -> list[str]:
    """Return the table's lines: each operation's medians, then ours over each other."""
    lines = [
        f"| operation | {what} | "
        + " | ".join(short[impl] for impl in impls)
        + " | "
        + " | ".join(f"ours/{SHORT[impl]}" for impl in impls[1:])
        + " |",
        "|---|---:|" + "---:|" * (2 * len(impls) - 1),
    ]
    for op, shown, n in rows:
        medians = [_time(results.median(impl, op, n)) for impl in impls]
        ratios = [_ratio(results, "ours", impl, op, n) for impl in impls[1:]]
        lines.append(f"| {shown} | {n:,} | {' | '.join([*medians, *ratios])} |")
    return lines


def _turn_note() -> str:
    return (
        f"A chat turn is what a chat engine does with LlamaIndex's `ChatMemoryBuffer` "
        "(llama-index-core's own, in each implementation's process) over the store: "
        "`put` the user's message, `get()`, `put` the answer. The memory is built once "
        "per conversation, as in "
        "`ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key=key, "
        f"token_limit={TURN_TOKEN_LIMIT:_}, tokenizer_fn=str.split)`: a whitespace "
        "tokenizer and a limit above every conversation, so `get()` reads and counts the "
        "whole conversation and the store's cost shows. The raw floor has no turn."
    )


def _steps(results: Results, op: str, n: int) -> str:
    steps = results.round_trips.get((op, n))
    return "" if steps is None else f"{steps} step{'s' * (steps != 1)}"


_STEPS = (
    "Steps are counted on one untimed call of ours at the store's transport: a script call or "
    "request on Redis and Upstash, a statement or statement group elsewhere; none in memory."
)


def _tool_safe_note(results: Results) -> str:
    """Tool-safe over plain on the same conversation, and the steps each call sent."""
    per_length = []
    for n in results.plan.lengths:
        if results.median("ours", "get_last_safe", n) is None:
            continue
        ratio = _ratio(results, "ours", "ours", "get_last_safe", n, "get_last")
        safe, plain = _steps(results, "get_last_safe", n), _steps(results, "get_last", n)
        steps = f" ({safe} against {plain})" if safe and plain else ""
        per_length.append(f"{ratio} at {n:,} messages{steps}")
    return (
        "The tool-safe read is `get_messages(key, offset=-20, tool_safe=True)` on the same "
        "conversations, which repeat a chat with tool exchanges (a user's message, an "
        "assistant's calling two tools, the two results, the answer) laid out so that the last "
        "20 start on the second tool result: the safe window widens back over the other result "
        f"to the call. Ours tool-safe over ours plain: {'; '.join(per_length)}. {_STEPS} "
        "The raw floor has no tool-exchange rule: its row is the plain read of the last 20, "
        "the least a tool-safe read can cost. LlamaIndex's stores have no tool-safe read."
    )


def _catalog_section(results: Results, impls: list[str]) -> list[str]:
    """The catalog's table: the first page on stores of each size, and what was measured."""
    rows = _catalog_rows(results)
    short = {**SHORT, "llama_index": "LlamaIndex get_keys()"}
    counted = [(n, _steps(results, CATALOG[0], n)) for _, _, n in rows]
    steps = ", ".join(f"{steps} at {n:,}" for n, steps in counted if steps)
    return [
        "Conversation catalog: ours is `list_conversations(limit=100)`, the first page of "
        f"{PAGE} conversations in key order with their message counts, times and metadata, on "
        "a store of its own holding that many conversations of one message each (filled "
        "untimed; the kindest catalog for a store that reads messages to list keys). LlamaIndex's "
        "stores have no page: its nearest operation, `get_keys()`, returns EVERY key of the "
        "store at once, with nothing about them. Measured one implementation after the other, "
        "so that each is alone on the server (LlamaIndex's Redis `get_keys` is `KEYS *`, which "
        "would list the others' keys too), with the same repeats and untimed calls as above."
        + (f" Ours sent {steps} per call. {_STEPS}" if steps else ""),
        "",
        *_table(results, impls, rows, "conversations", short),
    ]


def markdown(results: Results, chart_name: str | None) -> str:
    """Return the report: heading, conditions, the table, the implementations and the chart."""
    measured = {op for op, _, _ in _rows(results) + _catalog_rows(results)}
    # The baseline's columns only in a run that has one: other tables keep their shape.
    impls = [impl for impl in IMPLS if impl != "baseline" or impl in results.labels]
    lines = [
        f"# Benchmark: {results.name} — {results.backend.title}",
        "",
        _conditions(results, measured),
        "",
        f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs "
        f"(load average {_load()} at the end: other work slows every implementation alike, "
        "so read the ratios), "
        f"Python {platform.python_version()}; run {time.strftime('%Y-%m-%d %H:%M')} "
        f"in {results.seconds:.0f} s.",
        "",
        *_table(results, impls, _rows(results)),
    ]
    if TURN[0] in measured:
        lines += ["", _turn_note()]
    if "get_last_safe" in measured:
        lines += ["", _tool_safe_note(results)]
    if _catalog_rows(results):
        lines += ["", *_catalog_section(results, impls)]
    lines += ["", "Implementations:", ""]
    lines += [
        f"- {SHORT[impl]}: {results.labels[impl]}" for impl in impls if impl in results.labels
    ]
    lines += [f"- {note}" for note in results.backend.notes]
    if chart_name:
        lines += ["", f"![latency by conversation length]({chart_name})"]
    return "\n".join(lines) + "\n"


def chart(results: Results, path: Path) -> None:
    """Draw latency against conversation length, one panel per operation, one line per impl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

    rows = _rows(results) + _catalog_rows(results)
    ops = list(dict.fromkeys((op, shown) for op, shown, _ in rows))
    columns = 4
    nrows = (len(ops) + columns - 1) // columns
    fig, axes = plt.subplots(nrows, columns, figsize=(4.2 * columns, 3.4 * nrows), squeeze=False)
    for ax, (op, shown) in zip(axes.flat, ops, strict=False):
        lengths = [n for o, _, n in rows if o == op]
        for impl in IMPLS:
            points = [(n, results.median(impl, op, n)) for n in lengths]
            xs = [n for n, v in points if v is not None]
            ys = [v * 1e3 for _, v in points if v is not None]
            if xs:
                ax.plot(xs, ys, marker="o", color=COLORS[impl], label=SHORT[impl])
        ax.set_title(shown, fontsize=11)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lengths, [f"{n:,}" for n in lengths])
        ax.xaxis.set_minor_locator(NullLocator())
        low, high = ax.get_ylim()
        if high / low < 100:  # show at least two decades so the major ticks carry labels
            middle = (high * low) ** 0.5
            ax.set_ylim(middle / 10, middle * 10)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _time(v / 1e3)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(
            {"persist": "messages", "load": "messages", CATALOG[0]: "conversations"}.get(
                op, "conversation length"
            )
        )
        ax.set_ylabel("median latency")
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(ops) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(handles))
    fig.suptitle(
        f"{results.name}: {results.backend.title} (BENCH_SCALE={results.plan.scale:g})",
        x=0.01,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def stem(name: str, plan: Plan, baseline: bool = False) -> str:
    """The results files' name: ``<name>``, ``<name>-<ops>`` for a run of some operations.

    A run restricted with ``--ops`` never overwrites the full run's table, nor a run beside a
    baseline (``-baseline`` at the end) a run without one.
    """
    parts = [name] if set(plan.ops) == set(OPERATION_NAMES) else [name, *plan.ops]
    return "-".join([*parts, "baseline"] if baseline else parts)


def write(results: Results, out: Path) -> Path:
    """Write ``<out>/<stem>.md`` and ``<out>/<stem>.png``; print the table; return the md path."""
    out.mkdir(parents=True, exist_ok=True)
    name = stem(results.name, results.plan, "baseline" in results.labels)
    png = out / f"{name}.png"
    chart(results, png)
    text = markdown(results, png.name)
    md = out / f"{name}.md"
    md.write_text(text, encoding="utf-8")
    sys.stdout.write(text + f"\n(written to {md} and {png})\n\n")
    return md
