"""``chat-store-bench``: find the backends' benchmark declarations and run them."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import traceback
from contextlib import ExitStack
from pathlib import Path

from llama_index.storage.chat_store.bench._baseline import Checkout, checkout
from llama_index.storage.chat_store.bench._declare import QUICK_SCALE, Backend, Task
from llama_index.storage.chat_store.bench._report import write
from llama_index.storage.chat_store.bench._run import (
    FULL_REPEATS,
    OPERATION_NAMES,
    QUICK_REPEATS,
    Plan,
    default_repeats,
    run_backend,
)

BUILTIN = Path(__file__).with_name("backends")
SUFFIX = "_bench.py"
RESULTS = Path("bench", "results")  # committed: written only with --update-results
SCRATCH = Path("bench", "scratch")  # ignored by git: every other run


def find_root(start: Path) -> Path | None:
    """Return the workspace root above ``start`` (the pyproject with ``[tool.uv.workspace]``)."""
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.uv.workspace]" in pyproject.read_text("utf-8"):
            return folder
    return None


def declarations(root: Path | None) -> dict[str, Path]:
    """Map name -> declaration file: core's rows, then ``{integrations,packages}/*/bench/``.

    Raises:
        SystemExit: Two files declare the same backend name.
    """
    files = sorted(BUILTIN.glob(f"*{SUFFIX}"))
    if root is not None:
        for members in ("integrations", "packages"):
            files += sorted(root.glob(f"{members}/*/bench/*{SUFFIX}"))
    found: dict[str, Path] = {}
    for path in files:
        name = path.name[: -len(SUFFIX)]
        if name in found:
            raise SystemExit(f"two benchmark declarations named {name!r}: {found[name]} and {path}")
        found[name] = path
    return found


def load(name: str, path: Path) -> Backend | Task:
    """Import a declaration file and return its ``BENCH`` object."""
    spec = importlib.util.spec_from_file_location(f"chat_store_bench_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up there
    spec.loader.exec_module(module)
    bench = getattr(module, "BENCH", None)
    if not isinstance(bench, (Backend, Task)):
        raise TypeError(
            f"{path} must define BENCH = Backend(...) or a Task, found {type(bench).__name__}"
        )
    return bench


def run(
    name: str,
    bench: Backend | Task,
    plan: Plan,
    out: Path,
    baseline: Checkout | None = None,
    declaration: Path | None = None,
) -> None:
    """Run one declaration (found in ``declaration``) and write its report into ``out``.

    With ``baseline``, a backend's table gets our store at that revision beside the others; a
    task has no store, so it runs as without one.
    """
    if isinstance(bench, Backend):
        write(run_backend(name, bench, plan, baseline=baseline, declaration=declaration), out)
        return
    if baseline is not None:
        print(f"[{name}] not a store: measured without the baseline", file=sys.stderr)
    report = bench.run(plan.scale)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    md.write_text(report, encoding="utf-8")
    sys.stdout.write(report + f"\n(written to {md})\n\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-store-bench",
        description="Benchmark chat stores beside their raw driver and LlamaIndex's store.",
    )
    parser.add_argument("backends", nargs="*", help="backend names (default: every one found)")
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BENCH_SCALE", "1")),
        help="multiply every volume (env BENCH_SCALE; 0.01 for a quick check)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=int(os.environ.get("BENCH_REPEATS") or 0) or None,
        help=f"interleaved repeats (env BENCH_REPEATS; default {FULL_REPEATS}, or "
        f"{QUICK_REPEATS} below BENCH_SCALE={QUICK_SCALE:g}: a quick run checks the harness)",
    )
    parser.add_argument(
        "--ops",
        default=",".join(OPERATION_NAMES),
        help="comma-separated operations to measure (default: all of "
        f"{','.join(OPERATION_NAMES)}); a run of some writes <backend>-<ops>.md",
    )
    parser.add_argument("--root", type=Path, help="workspace root (default: found from cwd)")
    parser.add_argument(
        "--out", type=Path, help=f"results folder (default: ROOT/{SCRATCH}, a scratch folder)"
    )
    parser.add_argument(
        "--update-results",
        action="store_true",
        help=f"write the committed tables in ROOT/{RESULTS} instead of the scratch folder",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure our stores at git revision REV (checked out into a temporary "
        "worktree, run in a worker process) and report ours/baseline",
    )
    parser.add_argument("--list", action="store_true", help="list the backends found and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    root = args.root or find_root(Path.cwd())
    found = declarations(root)
    if args.list:
        for name, path in found.items():
            print(f"{name}\t{path}")
        return 0
    unknown = [name for name in args.backends if name not in found]
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; found: {', '.join(found)}")
    if args.out and args.update_results:
        parser.error("--out and --update-results name two different folders: give one")
    try:
        ops = tuple(op.strip() for op in args.ops.split(",") if op.strip())
        plan = Plan.from_scale(args.scale, args.repeats or default_repeats(args.scale), ops=ops)
    except ValueError as exc:
        parser.error(str(exc))
    base = root or Path.cwd()
    out = args.out or base / (RESULTS if args.update_results else SCRATCH)
    where = ""
    if not (args.out or args.update_results):
        where = f" (a scratch folder; --update-results writes {base / RESULTS})"
    print(f"results go to {out}{where}", file=sys.stderr)
    with ExitStack() as stack:
        # A terminated run still stops its servers and removes the baseline's worktree.
        previous = signal.signal(signal.SIGTERM, _terminate)
        stack.callback(signal.signal, signal.SIGTERM, previous)
        baseline = None
        if args.baseline:
            if root is None:
                parser.error("--baseline needs the workspace's git repository (run inside it)")
            try:
                baseline = stack.enter_context(checkout(root, args.baseline))
            except RuntimeError as exc:  # not a revision, or git cannot add the worktree
                parser.error(str(exc))
        failed = [
            name
            for name in args.backends or list(found)
            if not _run_one(name, found[name], plan, out, baseline)
        ]
    print(f"results written to {out}{where}")
    if failed:
        print(f"benchmark FAILED for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_one(
    name: str, declaration: Path, plan: Plan, out: Path, baseline: Checkout | None
) -> bool:
    try:
        run(name, load(name, declaration), plan, out, baseline, declaration)
    except Exception:
        traceback.print_exc()
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
