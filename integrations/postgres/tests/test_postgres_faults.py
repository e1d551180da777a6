"""Faults and hostile configuration: restarts, wrong passwords, names that look like SQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from llama_index.storage.chat_store.core import (
    AuthenticationError,
    BackendUnavailableError,
    ChatMessage,
    chat_store_from_dict,
)
from llama_index.storage.chat_store.postgres import ConnectorEngine, PostgresChatStore
from llama_index.storage.chat_store.postgres.testing import start_postgres
from llama_index.storage.chat_store.testing.services import LocalServer, free_port

SCRAM_USER, SCRAM_PASSWORD = "scram_user", "right-password-Z9"


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    """A server of our own, so restarting it disturbs no other test.

    ``scram_user`` must authenticate with a password; every other user is trusted.
    """
    server = start_postgres()
    url = f"postgresql://test@127.0.0.1:{server.port}/postgres"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}' SUPERUSER")
        hba = admin.execute("SHOW hba_file").fetchone()[0]  # type: ignore[index]
        with open(hba, encoding="utf-8") as f:
            rules = f.read()
        with open(hba, "w", encoding="utf-8") as f:
            f.write(f"host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n{rules}")
        admin.execute("SELECT pg_reload_conf()")
    yield server
    server.cleanup()


def _url(server: LocalServer, user: str = "test", password: str | None = None) -> str:
    auth = f"{user}:{password}" if password else user
    return f"postgresql://{auth}@127.0.0.1:{server.port}/postgres?connect_timeout=3"


def test_restart_mid_run_raises_then_recovers(server: LocalServer) -> None:
    """A restart breaks held connections: BackendUnavailableError, then the same store works."""
    store = PostgresChatStore.from_uri(_url(server), schema_name=f"r_{uuid.uuid4().hex[:8]}")
    store.add_message("k", ChatMessage(content="before"))
    asyncio.run(store.aadd_message("k", ChatMessage(content="before async")))
    with psycopg.connect(_url(server), autocommit=True) as raw:
        raw.execute("CHECKPOINT")  # the test server runs with synchronous_commit=off
    server.stop()
    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1"):
        store.add_message("k", ChatMessage(content="lost"))
    with pytest.raises(BackendUnavailableError):
        asyncio.run(store.aget_messages("k"))
    server.start()
    deadline = time.monotonic() + 10
    while True:  # the first call after the restart may still meet a dead pooled connection
        try:
            store.add_message("k", ChatMessage(content="after"))
            break
        except BackendUnavailableError:
            assert time.monotonic() < deadline
    assert [m.content for m in store.get_messages("k")] == ["before", "before async", "after"]
    assert asyncio.run(store.acount_messages("k")) == 3
    store.close()


def test_wrong_password_is_authentication_error(server: LocalServer) -> None:
    """Rejected credentials raise AuthenticationError (sync and async), password not shown."""
    store = PostgresChatStore.from_uri(_url(server, SCRAM_USER, "wrong-password"))
    with pytest.raises(AuthenticationError) as info:
        store.get_messages("k")
    assert "wrong-password" not in str(info.value)
    with pytest.raises(AuthenticationError):
        asyncio.run(store.aget_messages("k"))
    good = PostgresChatStore.from_uri(
        _url(server, SCRAM_USER, SCRAM_PASSWORD), schema_name=f"a_{uuid.uuid4().hex[:8]}"
    )
    good.add_message("k", ChatMessage(content="ok"))
    assert asyncio.run(good.acount_messages("k")) == 1
    assert SCRAM_PASSWORD not in repr(good) + str(good.to_dict())
    good.close()


def _shown(store: PostgresChatStore) -> str:
    """Everything a store shows of itself: repr, str, dumps, its URL."""
    return " ".join(
        [
            repr(store),
            str(store),
            str(store.to_dict()),
            store.model_dump_json(),
            store.connection_string,
        ]
    )


def test_password_in_the_query_authenticates_and_is_never_shown(server: LocalServer) -> None:
    """``?password=`` (libpq's other place for it) moves out of the URL like ``user:pw@``.

    If this fails: only the user-info password is taken out of the connection string, so
    the query's one shows in repr, str, to_dict() and every error message naming the URL.
    """
    url = (
        f"postgresql://{SCRAM_USER}@127.0.0.1:{server.port}/postgres"
        f"?connect_timeout=3&password={SCRAM_PASSWORD}"
    )
    schema = f"q_{uuid.uuid4().hex[:8]}"
    store = PostgresChatStore.from_uri(url, schema_name=schema)
    store.add_message("k", ChatMessage(content="sync"))
    asyncio.run(store.aadd_message("k", ChatMessage(content="async")))
    assert store.count_messages("k") == 2
    assert store.password is not None
    assert store.password.get_secret_value() == SCRAM_PASSWORD
    assert SCRAM_PASSWORD not in _shown(store)
    assert "connect_timeout=3" in store.connection_string
    rebuilt = chat_store_from_dict(store.to_dict(), password=SCRAM_PASSWORD)
    assert rebuilt.count_messages("k") == 2
    engine = ConnectorEngine.from_connection_string(url)
    assert SCRAM_PASSWORD not in repr(engine) + engine.url
    over_engine = PostgresChatStore.from_engine(engine, schema_name=schema)
    assert over_engine.count_messages("k") == 2
    assert SCRAM_PASSWORD not in _shown(over_engine)
    for opened in (store, rebuilt, over_engine):
        opened.close()


@pytest.mark.parametrize("async_call", [False, True])
def test_query_password_stays_out_of_errors(async_call: bool) -> None:
    """A dead server's error names the URL with the password masked, wherever it was given.

    If this fails: the query's password reaches the error message through the URL.
    """
    secret = "query-secret-8Hq"
    store = PostgresChatStore.from_uri(
        f"postgresql://someone@127.0.0.1:{free_port()}/db?password={secret}&connect_timeout=2"
    )

    def count() -> int:
        return asyncio.run(store.acount_messages("k")) if async_call else store.count_messages("k")

    with pytest.raises(BackendUnavailableError) as info:
        count()
    message = str(info.value)
    assert secret not in message
    assert "someone:***@127.0.0.1" in message
    assert secret not in _shown(store)


@pytest.mark.parametrize(
    ("schema", "table"),
    [('we"ird; DROP TABLE x; --', "tab'le;--"), ("схема ✓", "таблица :x %s")],
)
def test_hostile_schema_and_table_names_are_data(
    server: LocalServer, schema: str, table: str
) -> None:
    """Quotes, semicolons, colons, percent signs and unicode in names stay identifiers."""
    store = PostgresChatStore.from_uri(_url(server), schema_name=schema, table_name=table, ttl=60)
    store.add_messages("k", [ChatMessage(content="a"), ChatMessage(content="b")])
    store.add_message("k", ChatMessage(content="mid"), idx=1)
    assert [m.content for m in store.get_messages("k")] == ["a", "mid", "b"]
    assert asyncio.run(store.adelete_last_message("k")).content == "b"  # type: ignore[union-attr]
    assert store.get_keys() == ["k"]
    with psycopg.connect(_url(server), autocommit=True) as raw:
        names = {
            row[0]
            for row in raw.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
            )
        }
    assert names == {table, f"{table}_conversations", f"{table}_ops"}
    store.close()


def test_concurrent_first_use_creates_tables_once(server: LocalServer) -> None:
    """Many stores touching a new schema at once all succeed (advisory lock around DDL)."""
    schema = f"c_{uuid.uuid4().hex[:8]}"

    def first_use(i: int) -> None:
        with PostgresChatStore.from_uri(_url(server), schema_name=schema) as store:
            store.add_message("k", ChatMessage(content=f"m{i}"))

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(first_use, range(6)))
    with PostgresChatStore.from_uri(_url(server), schema_name=schema) as store:
        assert store.count_messages("k") == 6


def test_sweep_purges_expired_conversations(server: LocalServer) -> None:
    """sweep() deletes expired conversations' rows; live ones stay."""
    schema = f"w_{uuid.uuid4().hex[:8]}"
    short = PostgresChatStore.from_uri(_url(server), schema_name=schema, ttl=0.5)
    long = PostgresChatStore.from_uri(_url(server), schema_name=schema, ttl=600)
    short.add_messages("old", [ChatMessage(content="x")] * 3)
    long.add_messages("new", [ChatMessage(content="y")])
    time.sleep(0.8)
    assert short.get_keys() == ["new"]
    assert short.sweep() == 1
    with psycopg.connect(_url(server), autocommit=True) as raw:
        left = raw.execute(f'SELECT key FROM "{schema}".chatstore').fetchall()
    assert left == [("new",)]
    short.add_message("old", ChatMessage(content="fresh"))
    assert [m.content for m in short.get_messages("old")] == ["fresh"]


def test_uri_options_reach_the_drivers(server: LocalServer) -> None:
    """sslmode and other query options are kept; store options come out of the query."""
    store = PostgresChatStore.from_uri(
        f"postgresql+asyncpg://test:pw@127.0.0.1:{server.port}/postgres"
        "?sslmode=disable&application_name=chat-test&table=tbl&schema=opts&layout=native",
        engine_options={"pool_pre_ping": True},
    )
    assert (store.table_name, store.schema_name, store.layout) == ("tbl", "opts", "native")
    assert "sslmode=disable" in store.connection_string
    assert "pw" not in store.connection_string
    store.add_message("k", ChatMessage(content="x"))
    assert asyncio.run(store.acount_messages("k")) == 1
    with psycopg.connect(_url(server), autocommit=True) as raw:
        apps = raw.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chat-test'"
        ).fetchone()
    assert apps is not None
    assert apps[0] >= 1
    store.close()


def test_from_engine_uses_the_callers_engine(server: LocalServer) -> None:
    """from_engine runs sync calls on the caller's engine and leaves it open."""
    from sqlalchemy import create_engine

    engine = create_engine(f"postgresql+psycopg://test@127.0.0.1:{server.port}/postgres")
    store = PostgresChatStore.from_engine(engine, schema_name=f"e_{uuid.uuid4().hex[:8]}")
    store.add_message("k", ChatMessage(content="x"))
    assert asyncio.run(store.aget_messages("k"))[0].content == "x"
    store.close()
    with engine.connect() as still_open:
        assert still_open.exec_driver_sql("SELECT 1").scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("layout", ["native", "google", "llama_index"])
def test_change_records_stay_until_they_age_out(server: LocalServer, layout: str) -> None:
    """Each change leaves one record in ``<table>_ops``; sweep() forgets those past retention.

    If this fails: a change records no operation id (a retry after a lost reply would apply
    it twice), records it more than once, or old records are never pruned.
    """
    schema = f"o_{uuid.uuid4().hex[:8]}"
    store = PostgresChatStore.from_uri(_url(server), schema_name=schema, layout=layout)
    store.add_message("k", ChatMessage(content="a"))
    store.add_messages("k", [ChatMessage(content="b"), ChatMessage(content="c")])
    assert asyncio.run(store.adelete_last_message("k")).content == "c"  # type: ignore[union-attr]
    ops = f'"{schema}".chatstore_ops'
    with psycopg.connect(_url(server), autocommit=True) as raw:
        replies = [row[0] for row in raw.execute(f"SELECT reply FROM {ops}")]
        assert len(replies) == 3
        assert replies.count(None) == 2  # appends record no reply
        popped = json.loads(next(r for r in replies if r is not None))
        assert len(popped) == 1
        assert popped[0][0] == 2  # the position it had, then the stored message text
        assert json.loads(popped[0][1])["blocks"][0]["text"] == "c"
        raw.execute(f"UPDATE {ops} SET created_at = now() - interval '1 hour'")
        store.add_message("k", ChatMessage(content="d"))
        store.sweep()
        left = raw.execute(f"SELECT count(*) FROM {ops}").fetchone()
    assert left == (1,)
    store.close()
