"""LlamaIndex's AzureChatStore constructor forms build working stores, on a real Azurite.

LlamaIndex's forms: ``AzureChatStore(table_service_client, atable_service_client,
chat_table_name, metadata_table_name, metadata_partition_key, service_mode)`` with
``azure-data-tables`` service clients, and the class methods ``from_connection_string``,
``from_account_and_key``, ``from_sas_token``, ``from_aad_token``, ``from_account_and_id``.
Each form that Azurite can serve writes a message and reads it back; an argument no store
knows raises, naming it.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.data.tables import (
    AccountSasPermissions,
    ResourceTypes,
    TableServiceClient,
    generate_account_sas,
)
from azure.data.tables.aio import TableServiceClient as AsyncTableServiceClient

from llama_index.storage.chat_store.azure import AzureChatStore
from llama_index.storage.chat_store.azure.testing import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_connection_string,
)
from llama_index.storage.chat_store.core import ChatMessage, ConfigurationError


@pytest.fixture
def connection_string(azurite_table_endpoint: str) -> str:
    return azurite_connection_string(azurite_table_endpoint)


@pytest.fixture
def tables(connection_string: str) -> Iterator[Callable[[str], str]]:
    """``tables(prefix)``: a fresh table name; every table made this way is dropped after."""
    made: list[str] = []

    def new(prefix: str = "C") -> str:
        made.append(f"{prefix}{uuid.uuid4().hex[:16]}")
        return made[-1]

    yield new
    with TableServiceClient.from_connection_string(connection_string) as service:
        for name in made:
            service.delete_table(name)


def _round_trip(store: AzureChatStore) -> None:
    store.add_message("user1", ChatMessage(role="user", content="sync"))
    assert [m.content for m in store.get_messages("user1")] == ["sync"]


async def _async_round_trip(store: AzureChatStore, content: str) -> list[str | None]:
    await store.aadd_message("user1", ChatMessage(role="assistant", content=content))
    contents = [m.content for m in await store.aget_messages("user1")]
    await store.aclose()
    return contents


def test_service_clients_positionally(connection_string: str, tables: Callable[[str], str]) -> None:
    """AzureChatStore(tsc, atsc, chat_table_name, ...) works sync and from two event loops.

    If this fails: __init__'s positional parameters drifted from LlamaIndex's order, or the
    async service client is used across loops (its HTTP session belongs to one loop).
    """
    service = TableServiceClient.from_connection_string(connection_string)
    aservice = AsyncTableServiceClient.from_connection_string(connection_string)
    table = tables("C")
    store = AzureChatStore(service, aservice, table, "ChatMetadata", None, "storage")
    assert store.chat_table_name == table
    _round_trip(store)
    assert asyncio.run(_async_round_trip(store, "a1")) == ["sync", "a1"]
    assert asyncio.run(_async_round_trip(store, "a2")) == ["sync", "a1", "a2"]
    store.close()
    assert table in {t.name for t in service.list_tables()}  # the caller's client still works
    service.close()


def test_sync_service_client_alone_serves_async_calls(
    connection_string: str, tables: Callable[[str], str]
) -> None:
    """Without atable_service_client, async calls run the sync path in a worker thread.

    If this fails: async calls try to build an async client from nothing.
    """
    service = TableServiceClient.from_connection_string(connection_string)
    store = AzureChatStore(service, chat_table_name=tables("C"))
    _round_trip(store)
    assert asyncio.run(_async_round_trip(store, "a")) == ["sync", "a"]
    service.close()


def test_service_clients_in_llama_index_layout(
    connection_string: str, tables: Callable[[str], str]
) -> None:
    """Service clients with LlamaIndex's two-table layout (chat table + metadata table).

    If this fails: the metadata table arguments are lost on the service-client path.
    """
    service = TableServiceClient.from_connection_string(connection_string)
    chat, meta = tables("C"), tables("M")
    store = AzureChatStore(service, None, chat, meta, "part", layout="llama_index")
    _round_trip(store)
    assert store.get_keys() == ["user1"]
    assert store.metadata_partition_key == "part"
    service.close()


def test_from_connection_string_positionally(
    connection_string: str, tables: Callable[[str], str]
) -> None:
    """from_connection_string(connection_string, chat_table_name, ...), LlamaIndex's order.

    If this fails: the class method's positional parameters drifted.
    """
    store = AzureChatStore.from_connection_string(connection_string, tables("C"))
    _round_trip(store)


def test_from_account_and_key_positionally(
    azurite_table_endpoint: str, tables: Callable[[str], str]
) -> None:
    """from_account_and_key(account_name, account_key, endpoint, chat_table_name, ...).

    If this fails: the class method's positional parameters drifted.
    """
    store = AzureChatStore.from_account_and_key(
        AZURITE_ACCOUNT, AZURITE_KEY, azurite_table_endpoint, tables("C")
    )
    _round_trip(store)


def test_from_sas_token_positionally(
    azurite_table_endpoint: str, tables: Callable[[str], str]
) -> None:
    """from_sas_token(endpoint, sas_token, chat_table_name, ...) with a real account SAS.

    If this fails: the SAS credential does not reach the table clients.
    """
    sas = generate_account_sas(
        AzureNamedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY),
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(
            read=True, write=True, delete=True, list=True, add=True, create=True, update=True
        ),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    store = AzureChatStore.from_sas_token(azurite_table_endpoint, sas, tables("C"))
    _round_trip(store)


@pytest.mark.parametrize(
    ("method", "leading"),
    [
        ("from_connection_string", ["connection_string"]),
        ("from_account_and_key", ["account_name", "account_key", "endpoint"]),
        ("from_account_and_id", ["account_name", "endpoint"]),
        ("from_sas_token", ["endpoint", "sas_token"]),
        ("from_aad_token", ["endpoint"]),
    ],
)
def test_class_method_parameters_match_llama_index(method: str, leading: list[str]) -> None:
    """Every LlamaIndex class method takes LlamaIndex's parameters in LlamaIndex's order.

    Entra ID (from_aad_token, from_account_and_id) cannot run against Azurite, so their
    signatures are what is checked here.
    If this fails: a class method's parameters were renamed or reordered.
    """
    names = list(inspect.signature(getattr(AzureChatStore, method)).parameters)
    common = ["chat_table_name", "metadata_table_name", "metadata_partition_key", "service_mode"]
    assert names[: len(leading) + len(common)] == leading + common


def test_base_module_exports_the_store() -> None:
    """LlamaIndex's documented import path works.

    If this fails: azure/base.py is missing or re-exports something else.
    """
    from llama_index.storage.chat_store.azure.base import AzureChatStore as FromBase

    assert FromBase is AzureChatStore


def test_unknown_argument_is_an_error_naming_it(connection_string: str) -> None:
    """An argument the store does not take raises, naming it (no silent defaults).

    If this fails: the store's pydantic config no longer forbids extra arguments.
    """
    service = TableServiceClient.from_connection_string(connection_string)
    with pytest.raises((TypeError, ValueError), match="tll"):
        AzureChatStore(service, tll=300)
    with pytest.raises((TypeError, ValueError), match="session_id"):
        AzureChatStore.from_connection_string(connection_string, session_id="x")
    service.close()


def test_wrong_client_types_are_refused(connection_string: str) -> None:
    """A string where a service client belongs raises TypeError; an async client alone too.

    If this fails: __init__ no longer checks what it was given.
    """
    with pytest.raises(TypeError, match="TableServiceClient"):
        AzureChatStore(connection_string)  # type: ignore[arg-type]
    aservice = AsyncTableServiceClient.from_connection_string(connection_string)
    with pytest.raises(ConfigurationError, match="table_service_client"):
        AzureChatStore(None, aservice)
