"""The installed chat-store console script as a user runs it: pipes, exit codes, a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from llama_index.storage.chat_store.core import JsonFileChatStore, message_to_json
from llama_index.storage.chat_store.testing import numbered

CHAT_STORE = str(Path(sys.executable).parent / "chat-store")


def _fill(path: Path, keys: int, per_key: int) -> None:
    store = JsonFileChatStore(path=str(path))
    for i in range(keys):
        store.add_messages(f"key-{i}", numbered(per_key, prefix=f"{i}-"))


def _contents(path: Path) -> dict[str, list[str]]:
    store = JsonFileChatStore(path=str(path))
    return {k: [message_to_json(m) for m in store.get_messages(k)] for k in store.get_keys()}


def _run(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHAT_STORE, *argv], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def test_bad_input_exits_1_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    for argv, stdin in [
        (["keys", "redis://127.0.0.1:1/0"], None),
        (["keys", "::"], None),
        (["import", "memory://"], '{"format":"llama-index-chat-store-dump","version":1}\n{oops\n'),
    ]:
        result = _run(*argv, input=stdin)
        assert result.returncode == 1, result
        assert result.stderr.startswith("chat-store: error: ")
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr
    assert "stdin line 2: not JSON" in result.stderr


def test_export_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    _fill(tmp_path / "a.json", 20, 200)
    export = subprocess.Popen(
        [CHAT_STORE, "export", f"json://{tmp_path}/a.json", "--batch", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert export.stdout is not None
    export.stdout.readline()
    export.stdout.close()
    _, err = export.communicate(timeout=60)
    assert b"Traceback" not in err
    assert export.returncode == 1


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    _fill(tmp_path / "a.json", 2, 10)
    piped = _run("copy", f"json://{tmp_path}/a.json", f"json://{tmp_path}/b.json")
    assert piped.stderr == "copied 20 messages in 2 conversations; counts verified\n"
    leader, follower = pty.openpty()
    # A terminal 100 columns wide (a fresh pty has 0, where tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    with subprocess.Popen(
        [CHAT_STORE, "export", f"json://{tmp_path}/a.json", "-o", os.devnull],
        stderr=follower,
    ) as proc:
        os.close(follower)
        assert proc.wait(timeout=60) == 0
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert b"export" in seen
    assert b"msg" in seen
    assert b"exported 20 messages" in seen


def test_killed_copy_resumes_to_an_identical_store_without_duplicates(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.json", tmp_path / "dst.json"
    _fill(src, 20, 100)
    argv = ["copy", f"json://{src}", f"json://{dst}", "--batch", "10", "-q"]
    copy = subprocess.Popen([CHAT_STORE, *argv], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(map(len, _contents(dst).values())) < 300:
        time.sleep(0.01) if dst.exists() else time.sleep(0.05)
    copy.send_signal(signal.SIGKILL)
    copy.wait(timeout=60)
    left = _contents(dst)
    assert 0 < sum(map(len, left.values())) < 2000, "the copy finished before it was interrupted"
    if any(len(messages) < 100 for messages in left.values()):
        # Killed inside a conversation: a plain rerun refuses to guess; --resume continues.
        refused = _run(*argv)
        assert refused.returncode == 1
        assert "--resume" in refused.stderr
    resumed = _run(*argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _contents(dst) == _contents(src)
