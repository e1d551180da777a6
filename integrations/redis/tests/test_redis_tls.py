"""``rediss://``: TLS to a real redis-server (its TLS port) with a certificate made for the test.

Needs the ``openssl`` command line (to make a throwaway CA and server certificate).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama_index.storage.chat_store.core import BackendUnavailableError, ChatMessage
from llama_index.storage.chat_store.redis import RedisChatStore
from llama_index.storage.chat_store.redis.testing import start_redis
from llama_index.storage.chat_store.testing.services import free_port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it (valid for a day)."""
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests need the openssl command (apt-get install openssl)")
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=chat-store test CA", cwd=d)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext",
             cwd=d)  # fmt: skip
    return d


@pytest.fixture(scope="module")
def tls_url(certificates: Path) -> Iterator[str]:
    """``rediss://`` of a redis-server's TLS port (clients are not asked for certificates)."""
    tls_port = free_port()
    server = start_redis(
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(certificates / "server.crt"),
        "--tls-key-file", str(certificates / "server.key"),
        "--tls-ca-cert-file", str(certificates / "ca.crt"),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    yield f"rediss://127.0.0.1:{tls_port}/0"
    server.cleanup()


def test_sync_and_async_calls_over_tls(tls_url: str, certificates: Path) -> None:
    store = RedisChatStore.from_url(f"{tls_url}?ssl_ca_certs={certificates / 'ca.crt'}", ttl=60)
    store.add_message("k", ChatMessage(content="over TLS"))
    asyncio.run(store.aadd_message("k", ChatMessage(content="async, over TLS")))
    time.sleep(0.6)  # idle long enough that the next call polls its TLS connection first
    assert [m.content for m in store.get_messages("k")] == ["over TLS", "async, over TLS"]
    assert asyncio.run(store.acount_messages("k")) == 2
    assert store.get_keys() == ["k"]
    store.close()


def test_a_server_certificate_nobody_vouches_for_is_refused(tls_url: str) -> None:
    store = RedisChatStore.from_url(tls_url)  # the system's CAs do not know the test CA
    with pytest.raises(BackendUnavailableError, match="certificate verify failed"):
        store.add_message("k", ChatMessage(content="never sent"))
