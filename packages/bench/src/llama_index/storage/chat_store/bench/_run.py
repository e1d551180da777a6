"""Run one backend: our store, the raw floor and LlamaIndex's store on one server, interleaved."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from llama_index.storage.chat_store.bench._adapters import OursAdapter, RawAdapter
from llama_index.storage.chat_store.bench._baseline import Checkout
from llama_index.storage.chat_store.bench._declare import Backend, Reference, is_quick
from llama_index.storage.chat_store.bench._ops import (
    CATALOG,
    CATALOG_SIZES,
    OPERATIONS,
    TURN,
    TURN_LENGTHS,
    VOLUME_OPERATIONS,
    Sampler,
)
from llama_index.storage.chat_store.testing.services import LLAMA_INDEX_CORE, reference_python

WORKER = Path(__file__).with_name("_worker.py")
FULL_REPEATS = 15
QUICK_REPEATS = 3
SELF_WARMING = 0.5  # seconds: a call this long needs no untimed call before it
OPERATION_NAMES = tuple(op for op, _ in (*OPERATIONS, TURN, *VOLUME_OPERATIONS, CATALOG))
ROUND_TRIPS = ("get_last", "get_last_safe", CATALOG[0])
"""Operations whose steps per call the report counts (our store, in this process)."""


def default_repeats(scale: float) -> int:
    """Return the repeats of a run at ``scale``: every one, or few in a quick run."""
    return QUICK_REPEATS if is_quick(scale) else FULL_REPEATS


@dataclass(frozen=True)
class Plan:
    """Volumes and repeats, all derived from BENCH_SCALE, and the operations to measure."""

    scale: float
    repeats: int
    lengths: tuple[int, ...]
    volumes: tuple[int, ...]
    volume_repeats: int
    turn_lengths: tuple[int, ...] = ()
    ops: tuple[str, ...] = OPERATION_NAMES
    catalogs: tuple[int, ...] = ()

    @classmethod
    def from_scale(
        cls,
        scale: float,
        repeats: int,
        long_conversation: int = 10_000,
        ops: tuple[str, ...] = OPERATION_NAMES,
        largest_catalog: int = CATALOG_SIZES[-1],
    ) -> Plan:
        """Scale every volume (never below 10 messages or conversations); ``ops`` selects.

        Raises:
            ValueError: ``ops`` names an operation that does not exist.
        """
        unknown = sorted(set(ops) - set(OPERATION_NAMES))
        if unknown:
            raise ValueError(
                f"unknown operation(s) {', '.join(unknown)}; known: {', '.join(OPERATION_NAMES)}"
            )

        def scaled(n: int) -> int:
            return max(10, round(n * scale))

        return cls(
            scale=scale,
            repeats=repeats,
            lengths=tuple(sorted({10, scaled(long_conversation)})),
            volumes=tuple(sorted({scaled(1_000), scaled(100_000)})),
            volume_repeats=max(3, min(repeats, 7)),
            turn_lengths=tuple(sorted({scaled(n) for n in TURN_LENGTHS})),
            ops=tuple(op for op in OPERATION_NAMES if op in ops),
            catalogs=tuple(sorted({scaled(min(n, largest_catalog)) for n in CATALOG_SIZES})),
        )

    def operations_at(self, length: int) -> list[str]:
        """The operations measured on a conversation of ``length`` messages, in table order."""
        ops = [op for op, _ in OPERATIONS if length in self.lengths]
        ops += [TURN[0]] if length in self.turn_lengths else []
        return [op for op in ops if op in self.ops]

    def conversation_lengths(self) -> list[int]:
        """Every conversation length some selected operation is measured at."""
        lengths = set(self.lengths) | set(self.turn_lengths)
        return sorted(n for n in lengths if self.operations_at(n))


@dataclass
class Results:
    """Every sample of one backend's run, by (implementation, operation, length)."""

    name: str
    backend: Backend
    plan: Plan
    labels: dict[str, str]
    samples: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    round_trips: dict[tuple[str, int], int] = field(default_factory=dict)
    """Steps one call of our store sent, by (operation, length): see ``count_steps``."""
    seconds: float = 0.0

    def median(self, impl: str, op: str, length: int) -> float | None:
        values = self.samples.get((impl, op, length))
        return statistics.median(values) if values else None


class _Implementation(Protocol):
    volume: bool
    turn: bool
    tool_safe: bool
    catalog: bool

    def fill(self, key: str, n: int) -> None: ...
    def sample(self, op: str, key: str, length: int, warm: bool = False) -> float: ...
    def delete(self, key: str) -> None: ...
    def drop_catalog(self) -> None: ...
    def close(self) -> None: ...


class _InProcess:
    def __init__(self, adapter: OursAdapter | RawAdapter, workdir: str) -> None:
        self.adapter = adapter
        self.sampler = Sampler(adapter, workdir)
        self.volume = bool(adapter.supports_volume)
        self.turn = bool(adapter.supports_turn)
        self.tool_safe = bool(adapter.supports_tool_safe)
        self.catalog = bool(adapter.supports_catalog)

    def fill(self, key: str, n: int) -> None:
        self.sampler.fill(key, n)

    def drop_catalog(self) -> None:
        self.sampler.drop_catalog()

    def round_trips(self, op: str, key: str) -> int | None:
        if not isinstance(self.adapter, OursAdapter):
            return None
        return self.adapter.round_trips(op, key)

    def sample(self, op: str, key: str, length: int, warm: bool = False) -> float:
        return self.sampler.sample(op, key, length, warm)

    def delete(self, key: str) -> None:
        self.adapter.delete(key)

    def close(self) -> None:
        self.adapter.close()


class _Worker:
    """An implementation in its own process (``_worker.py``); it times itself: no IPC counted.

    LlamaIndex's store runs in the reference interpreter (:meth:`reference`), ours in this
    interpreter, at a previous revision with that revision's source folders first on the path
    (:meth:`ours`). The process starts (and spends its seconds importing) before the server
    is up; :meth:`connect` hands it the server's URL.
    """

    def __init__(
        self,
        argv: list[str],
        workdir: str,
        role: str,
        env: dict[str, str] | None = None,
        checkout: Checkout | None = None,
    ) -> None:
        self.role = role
        self.checkout = checkout
        self.hello: dict[str, Any] = {}
        self.volume = self.turn = self.tool_safe = self.catalog = False
        self._closed = False
        self._stderr = (Path(workdir) / f"{role}.log").open("w+", encoding="utf-8")
        self._proc = subprocess.Popen(  # noqa: S603 (our worker, in an interpreter we chose)
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env=env,
        )

    @classmethod
    def reference(cls, reference: Reference, workdir: str) -> _Worker:
        """LlamaIndex's store, built by the reference source's ``make_store(url)``."""
        python = reference_python(list(reference.requirements)).python
        source = Path(workdir) / "reference_store.py"
        source.write_text(reference.source, encoding="utf-8")
        return cls([str(python), str(WORKER), str(source), workdir], workdir, "LlamaIndex")

    @classmethod
    def ours(cls, name: str, declaration: Path, workdir: str, checkout: Checkout | None) -> _Worker:
        """Our store from the declaration's ``ours(url)``: the installed code or ``checkout``'s."""
        env = dict(os.environ)
        if checkout is not None:
            path = [str(p) for p in checkout.python_path()]
            env["PYTHONPATH"] = os.pathsep.join([*path, *filter(None, [env.get("PYTHONPATH")])])
        argv = [sys.executable, "-m", f"{__package__}._worker", "--ours", name, str(declaration)]
        role = "ours" if checkout is None else "baseline"
        return cls([*argv, workdir], workdir, role, env, checkout)

    def connect(self, url: str) -> _Worker:
        """Build the store on the server at ``url``; return this worker, ready to measure.

        Raises:
            RuntimeError: The worker failed, or a baseline worker imported our core or the
                store from outside its checkout (the current code instead of the revision's).
        """
        stdin = self._proc.stdin
        assert stdin is not None
        stdin.write(url + "\n")
        stdin.flush()
        self.hello = self._reply()
        self.volume = bool(self.hello["volume"])
        self.turn = bool(self.hello.get("turn"))
        self.tool_safe = bool(self.hello.get("tool_safe"))
        self.catalog = bool(self.hello.get("catalog"))
        if self.checkout is not None:
            self.checkout.imported_here(self.hello["modules"])
        return self

    def _reply(self) -> dict[str, Any]:
        stdout: IO[str] | None = self._proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            self._stderr.seek(0)
            raise RuntimeError(f"the {self.role} worker died:\n{self._stderr.read()[-4000:]}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the {self.role} worker failed:\n{reply['error']}")
        return reply

    def _call(self, verb: str, **args: Any) -> Any:
        stdin = self._proc.stdin
        assert stdin is not None
        stdin.write(json.dumps({"verb": verb, **args}) + "\n")
        stdin.flush()
        return self._reply()["result"]

    def fill(self, key: str, n: int) -> None:
        self._call("fill", key=key, n=n)

    def sample(self, op: str, key: str, length: int, warm: bool = False) -> float:
        return float(self._call("sample", op=op, key=key, length=length, warm=warm))

    def delete(self, key: str) -> None:
        self._call("delete", key=key)

    def drop_catalog(self) -> None:
        self._call("drop_catalog")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._proc.poll() is None and self._proc.stdin is not None:
                if self.hello:  # connected; else the closed pipe is the worker's way out
                    self._proc.stdin.write(json.dumps({"verb": "exit"}) + "\n")
                self._proc.stdin.close()
            self._proc.wait(timeout=60)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
            self._stderr.close()


class _Progress:
    """Progress lines on the log, each with the seconds since the backend's run started."""

    def __init__(self, name: str, log: IO[str], started: float) -> None:
        self.name, self.log, self.started = name, log, started

    def __call__(self, text: str) -> None:
        print(f"[{self.name} +{time.monotonic() - self.started:.0f} s] {text}", file=self.log)


def run_backend(
    name: str,
    backend: Backend,
    plan: Plan,
    log: IO[str] = sys.stderr,
    baseline: Checkout | None = None,
    declaration: Path | None = None,
) -> Results:
    """Measure every selected operation of ``backend`` for each implementation it declares.

    LlamaIndex's store is measured on the conversations it can hold (``reference_holds``) and
    left out of longer ones; a run where it holds none never starts the reference interpreter.
    With ``baseline``, our store at that revision is measured too, in a worker process built
    from ``declaration`` (the file that declared ``backend``).

    Raises:
        ValueError: ``baseline`` without ``declaration``.
        RuntimeError: A worker failed, or the baseline one imported the current code.
    """
    if baseline is not None and declaration is None:
        raise ValueError("a baseline run needs the declaration file of the backend")
    started = time.monotonic()
    say = _Progress(name, log, started)
    plan = Plan.from_scale(
        plan.scale, plan.repeats, backend.long_conversation, plan.ops, backend.largest_catalog
    )
    labels = {"ours": f"{backend.title}, from this repository"}
    lengths = plan.conversation_lengths()
    holds = backend.reference_holds
    with (
        tempfile.TemporaryDirectory(prefix=f"chat-store-bench-{name}-") as workdir,
        ExitStack() as stack,
    ):
        # Worker processes start first: their seconds of imports overlap the server's start.
        workers = _start_workers(name, backend, lengths, workdir, baseline, declaration, labels)
        for worker in workers.values():
            stack.callback(worker.close)
        say(f"started {', '.join(w.role for w in workers.values()) or 'no'} worker processes")
        url = stack.enter_context(backend.server())
        say("server ready")
        impls: dict[str, _Implementation] = {}
        try:
            if "ours" in workers:
                impls["ours"] = workers["ours"].connect(url)
                impls["baseline"] = workers["baseline"].connect(url)
            else:
                ours = OursAdapter(backend.ours, url, backend.fill_catalog)
                impls["ours"] = _InProcess(ours, workdir)
            if backend.raw is not None:
                raw = RawAdapter(backend.raw, url)
                impls["raw"] = _InProcess(raw, workdir)
                labels["raw"] = raw.driver.label
            if "llama_index" in workers:
                impls["llama_index"] = workers["llama_index"].connect(url)
            results = Results(name, backend, plan, labels)
            say("implementations ready")
            _measure(name, impls, plan, holds, results, say)
        finally:
            say("closing")
            for impl in impls.values():
                impl.close()
    results.seconds = time.monotonic() - started
    say("done")
    return results


def _start_workers(
    name: str,
    backend: Backend,
    lengths: list[int],
    workdir: str,
    baseline: Checkout | None,
    declaration: Path | None,
    labels: dict[str, str],
) -> dict[str, _Worker]:
    """Start the processes of the implementations that run in one; label them in ``labels``."""
    workers: dict[str, _Worker] = {}
    try:
        if baseline is not None and declaration is not None:
            # Both sides of the comparison in like processes: a call timed in a worker
            # follows a wake-up on its pipe, which the in-process one never pays.
            workers["ours"] = _Worker.ours(name, declaration, workdir, None)
            workers["baseline"] = _Worker.ours(name, declaration, workdir, baseline)
            labels["ours"] += ", in a worker process like the baseline's"
            labels["baseline"] = (
                f"{backend.title} at {baseline.label()}, in a worker process importing "
                "that revision's core and stores from a temporary git worktree"
            )
        reference, holds = backend.reference, backend.reference_holds
        if reference is not None and holds is not None and min(lengths, default=0) > holds:
            labels["llama_index"] = (
                f"{reference.label}: its store cannot hold {min(lengths):,} "
                "messages, left out of this run"
            )
        elif reference is not None:
            workers["llama_index"] = _Worker.reference(reference, workdir)
            reqs = [LLAMA_INDEX_CORE, *reference.requirements]
            labels["llama_index"] = f"{reference.label} ({', '.join(reqs)})"
            if holds is not None and max(lengths, default=0) > holds:
                labels["llama_index"] += (
                    f"; its store holds at most {holds:,} of these messages, so it is "
                    "left out of longer conversations"
                )
    except BaseException:
        for worker in workers.values():
            worker.close()
        raise
    return workers


def _key(name: str, impl: str, length: int) -> str:
    return f"chat-store-bench:{name}:{impl}:{length}"


def _takes(implementation: _Implementation, op: str) -> bool:
    if op == TURN[0]:
        return implementation.turn
    return op != "get_last_safe" or implementation.tool_safe


def _measure(
    name: str,
    impls: dict[str, _Implementation],
    plan: Plan,
    holds: int | None,
    results: Results,
    say: _Progress,
) -> None:
    order = list(impls)

    def measured(impl: str, length: int) -> bool:
        # LlamaIndex's store only where it can hold the conversation; nobody fills a
        # conversation for operations it does not take (the raw floor has no turn).
        if impl == "llama_index" and holds is not None and length > holds:
            return False
        return any(_takes(impls[impl], op) for op in plan.operations_at(length))

    filled = [
        (impl, length)
        for length in plan.conversation_lengths()
        for impl in order
        if measured(impl, length)
    ]
    for impl, length in filled:
        impls[impl].fill(_key(name, impl, length), length)
    _measure_conversations(name, impls, plan, set(filled), results, say)
    for length in plan.lengths:
        for op in set(ROUND_TRIPS) & set(plan.operations_at(length)):
            _count_round_trips(impls["ours"], op, _key(name, "ours", length), length, results)
    for impl, length in filled:
        impls[impl].delete(_key(name, impl, length))
    _measure_volumes(impls, plan, results, say)
    _measure_catalogs(impls, plan, results, say)


def _count_round_trips(
    ours: _Implementation, op: str, key: str, length: int, results: Results
) -> None:
    if isinstance(ours, _InProcess):
        steps = ours.round_trips(op, key)
        if steps is not None:
            results.round_trips[(op, length)] = steps


def _measure_conversations(
    name: str,
    impls: dict[str, _Implementation],
    plan: Plan,
    filled: set[tuple[str, int]],
    results: Results,
    say: _Progress,
) -> None:
    """Time every operation on every filled conversation, the implementations in turn."""
    order, lengths = list(impls), plan.conversation_lengths()
    last: dict[tuple[str, str, int], float] = {}
    # Repeat 0 warms up (imports, caches, connections) and is thrown away. A quick run checks
    # the harness, its numbers are not for reading: no warm-up round, no untimed calls, and a
    # call of SELF_WARMING seconds or more is made once (LlamaIndex's 20 rewrites of a whole
    # conversation take seconds on an emulator).
    warm = not is_quick(plan.scale)
    for repeat in range(0 if warm else 1, plan.repeats + 1):
        say(f"repeat {repeat}/{plan.repeats}")
        turn = order[repeat % len(order) :] + order[: repeat % len(order)]
        for length in lengths:
            for op in plan.operations_at(length):
                for impl in turn:
                    if (impl, length) not in filled or not _takes(impls[impl], op):
                        continue
                    # An untimed call first, in the implementation's own process (see
                    # Sampler.sample): the timed one must not pay for waking up after
                    # another implementation's long call (an idle client and server backend
                    # measured 3-5x slower on their next statement), and rotation alone
                    # always puts the same implementation right after the slowest one. A call
                    # that took SELF_WARMING seconds last time skips it (waking costs
                    # milliseconds, under 1 % of such a call), and so does round 0, untimed.
                    key, sample = _key(name, impl, length), (impl, op, length)
                    if not warm and last.get(sample, 0.0) >= SELF_WARMING:
                        continue
                    first = bool(warm and repeat and last.get(sample, 0.0) < SELF_WARMING)
                    took = last[sample] = impls[impl].sample(op, key, length, first)
                    if repeat:
                        results.samples.setdefault((impl, op, length), []).append(took)


def _measure_volumes(
    impls: dict[str, _Implementation], plan: Plan, results: Results, say: _Progress
) -> None:
    """Time persist and load of whole stores, where ours and another implementation have one."""
    volume = [impl for impl in impls if impls[impl].volume]
    if "ours" not in volume or not {"persist", "load"} & set(plan.ops):
        return
    for n in plan.volumes:
        # No warm-up round: one persist or load is long enough to amortise first-call costs.
        for repeat in range(plan.volume_repeats):
            say(f"persist/load of {n} messages, repeat {repeat + 1}")
            turn = volume[repeat % len(volume) :] + volume[: repeat % len(volume)]
            for op, _ in VOLUME_OPERATIONS:
                if op not in plan.ops:
                    continue
                for impl in turn:
                    took = impls[impl].sample(op, "", n)
                    results.samples.setdefault((impl, op, n), []).append(took)


def _measure_catalogs(
    impls: dict[str, _Implementation], plan: Plan, results: Results, say: _Progress
) -> None:
    """Time the first page of a catalog of each size, one implementation after the other.

    Not interleaved: each implementation's conversations are alone on the server while it is
    measured (LlamaIndex's ``get_keys`` lists every key of a Redis database, so another
    implementation's 100,000 conversations would count as its own), and a catalog grows from
    one size to the next instead of being filled again. Round 0 grows it and warms up.
    LlamaIndex's goes first: what our stores leave behind for a while (Redis keeps a record
    of a conversation's latest changes for minutes after it is removed) must not be listed.
    """
    op, warm = CATALOG[0], not is_quick(plan.scale)
    if op not in plan.ops or not impls["ours"].catalog:
        return
    for impl in reversed([i for i in impls if impls[i].catalog]):
        implementation = impls[impl]
        try:
            for n in plan.catalogs:
                started = time.monotonic()
                last = implementation.sample(op, "", n)
                say(f"{impl}: {n:,} conversations, ready in {time.monotonic() - started:.0f} s")
                for _ in range(plan.repeats):
                    # With the untimed call first (see above).
                    last = implementation.sample(op, "", n, warm and last < SELF_WARMING)
                    results.samples.setdefault((impl, op, n), []).append(last)
                if impl == "ours":
                    _count_round_trips(implementation, op, "", n, results)
        finally:
            implementation.drop_catalog()
