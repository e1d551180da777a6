"""``chat-store-bench``: find the backends' benchmark declarations and run them."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import traceback
from pathlib import Path

from llama_index.storage.chat_store.bench._declare import Backend, Task
from llama_index.storage.chat_store.bench._report import write
from llama_index.storage.chat_store.bench._run import OPERATION_NAMES, Plan, run_backend

BUILTIN = Path(__file__).with_name("backends")
SUFFIX = "_bench.py"


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


def run(name: str, bench: Backend | Task, plan: Plan, out: Path) -> None:
    """Run one declaration and write its report into ``out``."""
    if isinstance(bench, Backend):
        write(run_backend(name, bench, plan), out)
        return
    report = bench.run(plan.scale)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    md.write_text(report, encoding="utf-8")
    sys.stdout.write(report + f"\n(written to {md})\n\n")


def main(argv: list[str] | None = None) -> int:
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
        "--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", "15")), help="repeats"
    )
    parser.add_argument(
        "--ops",
        default=",".join(OPERATION_NAMES),
        help="comma-separated operations to measure (default: all of "
        f"{','.join(OPERATION_NAMES)}); a run of some writes <backend>-<ops>.md",
    )
    parser.add_argument("--root", type=Path, help="workspace root (default: found from cwd)")
    parser.add_argument("--out", type=Path, help="results folder (default: ROOT/bench/results)")
    parser.add_argument("--list", action="store_true", help="list the backends found and exit")
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
    out = args.out or (root or Path.cwd()) / "bench" / "results"
    try:
        ops = tuple(op.strip() for op in args.ops.split(",") if op.strip())
        plan = Plan.from_scale(args.scale, args.repeats, ops=ops)
    except ValueError as exc:
        parser.error(str(exc))
    failed = []
    for name in args.backends or list(found):
        try:
            run(name, load(name, found[name]), plan, out)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"benchmark FAILED for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
