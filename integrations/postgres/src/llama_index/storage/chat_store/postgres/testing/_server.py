"""A real PostgreSQL server (initdb + postgres) on a free loopback port."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from llama_index.storage.chat_store.testing.services import (
    LocalServer,
    ServiceUnavailableError,
    docker_container,
    local,
    running_as_root,
    service_fixture,
)

HOW_TO = (
    "install PostgreSQL server binaries (Debian/Ubuntu: apt-get install postgresql; they are "
    "looked up with pg_config, on PATH and in /usr/lib/postgresql/*/bin), or set "
    "CHAT_STORE_TEST_POSTGRES_URL=postgresql://user:password@host:port/db to a disposable database"
)
USER = "test"


def postgres_bindir() -> Path | None:
    """Return the directory holding initdb and postgres, or None."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)  # noqa: S603
        candidates.append(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if (
            candidate
            and (Path(candidate) / "initdb").exists()
            and (Path(candidate) / "postgres").exists()
        ):
            return Path(candidate)
    return None


def start_postgres() -> LocalServer:
    """Initialise a cluster in a temp dir and start PostgreSQL on a free port.

    The superuser is ``test`` with trust authentication on 127.0.0.1; the URL is
    ``postgresql://test@127.0.0.1:PORT/postgres``. Under root the server runs as
    the ``postgres`` system user (PostgreSQL refuses root).

    Raises:
        ServiceUnavailableError: The binaries are missing or the server did not start.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise ServiceUnavailableError("PostgreSQL server binaries (initdb, postgres) not found")
    user = "postgres" if running_as_root() else None
    workdir = Path(tempfile.mkdtemp(prefix="chat-store-postgres-"))
    if user:
        shutil.chown(workdir, user, user)
    data = workdir / "data"
    init = subprocess.run(  # noqa: S603
        [str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
         "--locale=C", "--no-sync"],
        capture_output=True, text=True, user=user, check=False,
    )  # fmt: skip
    if init.returncode != 0:
        raise ServiceUnavailableError(f"initdb failed: {init.stderr[-1500:]}")

    def command(port: int, workdir: Path) -> list[str]:
        return [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(workdir),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]  # fmt: skip

    def ready(port: int) -> bool:
        probe = subprocess.run(  # noqa: S603
            [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", USER],
            capture_output=True, check=False,
        )  # fmt: skip
        return probe.returncode == 0

    # SIGQUIT is PostgreSQL's immediate shutdown: tests never need a clean checkpoint.
    server = LocalServer(
        "postgres", command, ready, workdir=workdir, user=user, stop_signal=signal.SIGQUIT
    )
    return server.start()


def server_url(server: LocalServer, database: str = "postgres") -> str:
    """Return the libpq URL of a server started by :func:`start_postgres`."""
    return f"postgresql://{USER}@127.0.0.1:{server.port}/{database}"


def _postgres_image() -> Any:
    from testcontainers.postgres import PostgresContainer

    return PostgresContainer("postgres:15", driver=None)


postgres_url = service_fixture(
    "postgres_url", "PostgreSQL", "CHAT_STORE_TEST_POSTGRES_URL",
    local(start_postgres, server_url),
    docker_container(_postgres_image, lambda c: str(c.get_connection_url())),
    HOW_TO,
    doc="The URL (``postgresql://...``) of a real PostgreSQL database for this test session.",
)  # fmt: skip
