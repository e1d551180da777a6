"""Core's registry finds the Postgres store by URL scheme and rebuilds it from its dump."""

from __future__ import annotations

import pytest

from llama_index.storage.chat_store.core import ConfigurationError
from llama_index.storage.chat_store.core.registry import chat_store_from_dict, chat_store_from_url
from llama_index.storage.chat_store.postgres import PostgresChatStore


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:pw@db.example:5432/app?table=chats&schema=s1&sslmode=require",
     "postgresql+asyncpg://u:pw@db.example/app?table=chats&schema=s1&sslmode=require",
     "postgres://u:pw@db.example/app?table=chats&schema=s1&sslmode=require"],
)  # fmt: skip
def test_schemes_resolve_and_round_trip(url: str) -> None:
    """Every scheme builds a PostgresChatStore; the dump has no password and rebuilds it."""
    store = chat_store_from_url(url)
    assert isinstance(store, PostgresChatStore)
    assert (store.table_name, store.schema_name) == ("chats", "s1")
    data = store.to_dict()
    assert "pw" not in str(data) + repr(store)
    assert "sslmode=require" in data["connection_string"]
    again = chat_store_from_dict(data, password="pw")
    assert isinstance(again, PostgresChatStore)
    assert again.password is not None
    assert again.password.get_secret_value() == "pw"


def test_wrong_scheme_and_bad_options_are_configuration_errors() -> None:
    """A foreign scheme, ttl on a layout without expiry, refresh_on_read without ttl, or a
    too-long name are refused."""
    with pytest.raises(ConfigurationError):
        PostgresChatStore.from_uri("redis://localhost/0")
    with pytest.raises(ValueError, match="ttl"):
        PostgresChatStore.from_uri("postgresql://h/db", layout="llama_index", ttl=5)
    with pytest.raises(ValueError, match="refresh_on_read needs ttl"):
        PostgresChatStore.from_uri("postgresql://h/db?refresh_on_read=true")
    with pytest.raises(ValueError, match="40"):
        PostgresChatStore.from_uri("postgresql://h/db", table_name="x" * 41)


def test_refresh_on_read_is_a_url_option() -> None:
    """``refresh_on_read`` in the query configures the store and leaves the driver options."""
    store = PostgresChatStore.from_uri(
        "postgresql://h/db?ttl=60&refresh_on_read=true&sslmode=require"
    )
    assert (store.ttl, store.refresh_on_read) == (60, True)
    assert "refresh_on_read" not in store.connection_string
    assert not PostgresChatStore.from_uri(
        "postgresql://h/db?ttl=60&refresh_on_read=false"
    ).refresh_on_read
