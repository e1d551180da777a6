"""Start a real server as a child process on a free loopback port, and stop it reliably."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "LocalServer",
    "ServiceUnavailableError",
    "free_port",
    "listening",
    "running_as_root",
    "start_python_server",
]


class ServiceUnavailableError(RuntimeError):
    """A way of getting a server did not work here; the message says why."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def running_as_root() -> bool:
    """Return whether this process is root (PostgreSQL refuses to run as root)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


class LocalServer:
    """A server binary run in the foreground as a child process, restartable on its port.

    Args:
        name: Shown in errors.
        command: Builds the argv from (port, workdir).
        ready: Returns True once the server answers on the port.
        workdir: Where the server keeps its files (created; removed on cleanup).
        user: Run as this system user (PostgreSQL under root).
        stop_signal: Sent to stop the server before a kill.
    """

    def __init__(
        self,
        name: str,
        command: Callable[[int, Path], Sequence[str]],
        ready: Callable[[int], bool],
        *,
        workdir: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        start_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self._command = command
        self._ready = ready
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"chat-store-{name}-"))
        self._user = user
        self._stop_signal = stop_signal
        self._start_timeout = start_timeout
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.workdir / "server.log"
        atexit.register(self.cleanup)

    def start(self) -> LocalServer:
        """Start (or restart) the server on its port and wait until it answers."""
        if self.running:
            return self
        for attempt in range(2):
            with self._log.open("ab") as log:
                self._proc = subprocess.Popen(  # noqa: S603 (argv built by us)
                    list(self._command(self.port, self.workdir)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    user=self._user,
                    start_new_session=True,
                )
            try:
                self._wait_ready()
                return self
            except ServiceUnavailableError:
                self.stop()
                if attempt or "in use" not in self.log_tail():
                    raise
                self.port = free_port()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceUnavailableError(
                    f"{self.name} exited with {self._proc.returncode}: {self.log_tail()}"
                )
            if self._ready(self.port):
                return
            time.sleep(0.02)
        raise ServiceUnavailableError(
            f"{self.name} not ready after {self._start_timeout} s: {self.log_tail()}"
        )

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop the server (its files stay, so start() brings the same data back)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, self._stop_signal)
            proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def cleanup(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, size: int = 1500) -> str:
        """Return the end of the server's log."""
        try:
            return self._log.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_python_server(
    name: str, module: str, *args: str, ready: Callable[[int], bool] = listening
) -> LocalServer:
    """Run ``python -m MODULE PORT ARGS...`` as a child process until it serves on PORT.

    For the servers written in Python (moto, the Upstash bridge, the Tablestore emulator) when
    they must not share the caller's interpreter: a benchmark measuring clients in its own
    process would otherwise slow them with the server's threads (one GIL), and not the clients
    it runs in other processes.
    """

    def command(port: int, workdir: Path) -> list[str]:
        return [sys.executable, "-m", module, str(port), *args]

    return LocalServer(name, command, ready).start()
