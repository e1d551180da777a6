"""The Azurite service helper: finds, starts, restarts and explains how to install Azurite."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_index.storage.chat_store.azure.testing import azurite_ready, start_azurite
from llama_index.storage.chat_store.testing.services import ServiceUnavailableError


def test_start_stop_restart_on_the_same_port() -> None:
    server = start_azurite()
    try:
        port = server.port
        assert azurite_ready(port)
        server.stop()
        assert not azurite_ready(port)
        server.start()
        assert server.port == port
        assert azurite_ready(port)
    finally:
        server.cleanup()


def test_missing_azurite_says_where_it_looked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CHAT_STORE_NODE_PREFIX", str(tmp_path / "node"))
    with pytest.raises(ServiceUnavailableError, match="azurite-table"):
        start_azurite()
