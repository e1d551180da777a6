"""Run one backend: our store, the raw floor and LlamaIndex's store on one server, interleaved."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from llama_index.storage.chat_store.bench._adapters import OursAdapter, RawAdapter
from llama_index.storage.chat_store.bench._declare import Backend, Reference
from llama_index.storage.chat_store.bench._ops import OPERATIONS, VOLUME_OPERATIONS, Sampler

# The services package re-exports these at run time; mypy sees them in their module.
from llama_index.storage.chat_store.testing.services._reference import (
    LLAMA_INDEX_CORE,
    reference_python,
)

WORKER = Path(__file__).with_name("_worker.py")


@dataclass(frozen=True)
class Plan:
    """Volumes and repeats, all derived from BENCH_SCALE."""

    scale: float
    repeats: int
    lengths: tuple[int, ...]
    volumes: tuple[int, ...]
    volume_repeats: int

    @classmethod
    def from_scale(cls, scale: float, repeats: int, long_conversation: int = 10_000) -> Plan:
        def scaled(n: int) -> int:
            return max(10, round(n * scale))

        return cls(
            scale=scale,
            repeats=repeats,
            lengths=tuple(sorted({10, scaled(long_conversation)})),
            volumes=tuple(sorted({scaled(1_000), scaled(100_000)})),
            volume_repeats=max(3, min(repeats, 7)),
        )


@dataclass
class Results:
    """Every sample of one backend's run, by (implementation, operation, length)."""

    name: str
    backend: Backend
    plan: Plan
    labels: dict[str, str]
    samples: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def median(self, impl: str, op: str, length: int) -> float | None:
        values = self.samples.get((impl, op, length))
        return statistics.median(values) if values else None


class _Implementation(Protocol):
    volume: bool

    def fill(self, key: str, n: int) -> None: ...
    def sample(self, op: str, key: str, length: int) -> float: ...
    def delete(self, key: str) -> None: ...
    def close(self) -> None: ...


class _InProcess:
    def __init__(self, adapter: OursAdapter | RawAdapter, workdir: str) -> None:
        self.adapter = adapter
        self.sampler = Sampler(adapter, workdir)
        self.volume = bool(adapter.supports_volume)

    def fill(self, key: str, n: int) -> None:
        self.sampler.fill(key, n)

    def sample(self, op: str, key: str, length: int) -> float:
        return self.sampler.sample(op, key, length)

    def delete(self, key: str) -> None:
        self.adapter.delete(key)

    def close(self) -> None:
        self.adapter.close()


class _ReferenceProcess:
    """LlamaIndex's store in the reference interpreter; it times itself, so IPC is not counted."""

    def __init__(self, reference: Reference, url: str, workdir: str) -> None:
        python = reference_python(list(reference.requirements)).python
        source = Path(workdir) / "reference_store.py"
        source.write_text(reference.source, encoding="utf-8")
        self._stderr = (Path(workdir) / "reference.log").open("w+", encoding="utf-8")
        self._proc = subprocess.Popen(  # noqa: S603 (our worker in the reference interpreter)
            [str(python), str(WORKER), str(source), url, workdir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        hello = self._reply()
        self.volume = bool(hello["volume"])

    def _reply(self) -> dict[str, Any]:
        stdout: IO[str] | None = self._proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            self._stderr.seek(0)
            raise RuntimeError(f"the LlamaIndex worker died:\n{self._stderr.read()[-4000:]}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the LlamaIndex worker failed:\n{reply['error']}")
        return reply

    def _call(self, verb: str, **args: Any) -> Any:
        stdin = self._proc.stdin
        assert stdin is not None
        stdin.write(json.dumps({"verb": verb, **args}) + "\n")
        stdin.flush()
        return self._reply()["result"]

    def fill(self, key: str, n: int) -> None:
        self._call("fill", key=key, n=n)

    def sample(self, op: str, key: str, length: int) -> float:
        return float(self._call("sample", op=op, key=key, length=length))

    def delete(self, key: str) -> None:
        self._call("delete", key=key)

    def close(self) -> None:
        try:
            if self._proc.poll() is None and self._proc.stdin is not None:
                self._proc.stdin.write(json.dumps({"verb": "exit"}) + "\n")
                self._proc.stdin.close()
            self._proc.wait(timeout=60)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
            self._stderr.close()


def run_backend(name: str, backend: Backend, plan: Plan, log: IO[str] = sys.stderr) -> Results:
    """Measure every operation of ``backend`` for each implementation it declares."""
    started = time.monotonic()
    plan = Plan.from_scale(plan.scale, plan.repeats, backend.long_conversation)
    labels = {"ours": f"{backend.title}, from this repository"}
    with (
        tempfile.TemporaryDirectory(prefix=f"chat-store-bench-{name}-") as workdir,
        backend.server() as url,
    ):
        impls: dict[str, _Implementation] = {}
        try:
            impls["ours"] = _InProcess(OursAdapter(backend.ours, url), workdir)
            if backend.raw is not None:
                raw = RawAdapter(backend.raw, url)
                impls["raw"] = _InProcess(raw, workdir)
                labels["raw"] = raw.driver.label
            holds = backend.reference_holds
            if backend.reference is not None and holds is not None and max(plan.lengths) > holds:
                labels["llama_index"] = (
                    f"{backend.reference.label}: its store cannot hold {max(plan.lengths):,} "
                    "messages, left out of this run"
                )
            elif backend.reference is not None:
                print(f"[{name}] starting the LlamaIndex reference interpreter", file=log)
                impls["llama_index"] = _ReferenceProcess(backend.reference, url, workdir)
                reqs = [LLAMA_INDEX_CORE, *backend.reference.requirements]
                labels["llama_index"] = f"{backend.reference.label} ({', '.join(reqs)})"
            results = Results(name, backend, plan, labels)
            _measure(name, impls, plan, results, log)
        finally:
            for impl in impls.values():
                impl.close()
    results.seconds = time.monotonic() - started
    return results


def _key(name: str, impl: str, length: int) -> str:
    return f"chat-store-bench:{name}:{impl}:{length}"


def _measure(
    name: str, impls: dict[str, _Implementation], plan: Plan, results: Results, log: IO[str]
) -> None:
    order = list(impls)
    for length in plan.lengths:
        for impl in order:
            impls[impl].fill(_key(name, impl, length), length)
    # Repeat 0 warms up (imports, caches, connections) and is thrown away.
    for repeat in range(plan.repeats + 1):
        print(f"[{name}] repeat {repeat}/{plan.repeats}", file=log)
        turn = order[repeat % len(order) :] + order[: repeat % len(order)]
        for length in plan.lengths:
            for op, _ in OPERATIONS:
                for impl in turn:
                    # An untimed call first: the timed one must not pay for waking up after
                    # another implementation's long call (an idle client and server backend
                    # measured 3-5x slower on their next statement), and rotation alone
                    # always puts the same implementation right after the slowest one.
                    impls[impl].sample(op, _key(name, impl, length), length)
                    took = impls[impl].sample(op, _key(name, impl, length), length)
                    if repeat:
                        results.samples.setdefault((impl, op, length), []).append(took)
    for length in plan.lengths:
        for impl in order:
            impls[impl].delete(_key(name, impl, length))
    volume = [impl for impl in order if impls[impl].volume]
    if "ours" not in volume:
        return
    for n in plan.volumes:
        # No warm-up round: one persist or load is long enough to amortise first-call costs.
        for repeat in range(plan.volume_repeats):
            print(f"[{name}] persist/load of {n} messages, repeat {repeat + 1}", file=log)
            turn = volume[repeat % len(volume) :] + volume[: repeat % len(volume)]
            for op, _ in VOLUME_OPERATIONS:
                for impl in turn:
                    took = impls[impl].sample(op, "", n)
                    results.samples.setdefault((impl, op, n), []).append(took)
