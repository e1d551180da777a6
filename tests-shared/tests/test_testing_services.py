"""The service fixtures start real servers, restart them, and fail loudly when they cannot."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import pytest

from llama_index.storage.chat_store.core import ChatMessage, message_to_json
from llama_index.storage.chat_store.testing.services import (
    ReferencePython,
    ServiceUnavailableError,
    provide,
    start_redis,
)
from llama_index.storage.chat_store.testing.services._postgres import postgres_bindir
from llama_index.storage.chat_store.testing.services._redis import redis_ping


def test_redis_url_answers_ping(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    assert redis_ping(parts.port or 6379, parts.hostname or "127.0.0.1")


def test_postgres_url_accepts_connections(postgres_url: str) -> None:
    bindir = postgres_bindir()
    assert bindir is not None
    parts = urlsplit(postgres_url)
    probe = subprocess.run(
        [str(bindir / "pg_isready"), "-h", str(parts.hostname), "-p", str(parts.port)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stdout


def test_local_server_restarts_on_the_same_port() -> None:
    server = start_redis()
    try:
        port = server.port
        server.stop()
        assert not redis_ping(port)
        server.start()
        assert server.port == port
        assert redis_ping(port)
    finally:
        server.cleanup()
    assert not server.workdir.exists()


def test_no_way_to_get_a_server_fails_with_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAT_STORE_TEST_NOPE_URL", raising=False)

    def local() -> tuple[str, object]:
        raise ServiceUnavailableError("nope-server is not on PATH")

    with pytest.raises(pytest.fail.Exception, match=r"nope-server is not on PATH.*To fix: install"):
        provide("Nope", "CHAT_STORE_TEST_NOPE_URL", local, None, "install nope")  # type: ignore[arg-type]


def test_environment_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_STORE_TEST_NOPE_URL", "nope://elsewhere")
    url, stop = provide("Nope", "CHAT_STORE_TEST_NOPE_URL", None, None, "")
    assert url == "nope://elsewhere"
    stop()


def test_llama_index_reference_runs_real_llama_index(
    llama_index_reference: Callable[[Sequence[str]], ReferencePython],
) -> None:
    ours = ChatMessage(role="user", content="héllo", additional_kwargs={"b": b"\x00"})
    reference = llama_index_reference([])
    script = (
        "import sys\n"
        "from llama_index.core.base.llms.types import ChatMessage\n"
        "m = ChatMessage.model_validate_json(sys.argv[1])\n"
        "print(m.model_dump_json())\n"
    )
    line = message_to_json(ours)
    assert reference.run(script, line).strip() == line
