"""The URL registry: discovery through installed entry points, clashes, hints, broken plugins.

The fake distributions under ``data/fake_site`` are real ``*.dist-info`` folders; putting the
folder on ``sys.path`` makes ``importlib.metadata`` find them as it finds installed packages.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama_index.storage.chat_store.core import (
    BackendImportError,
    CapabilityNotSupportedError,
    ChatMessage,
    ConfigurationError,
    JsonFileChatStore,
    SimpleChatStore,
    UnknownSchemeError,
    chat_store_from_dict,
    chat_store_from_url,
    registered_schemes,
)
from llama_index.storage.chat_store.core.registry import INSTALL_HINTS, mask_url, without_secrets

FAKE_SITE = Path(__file__).parent / "data" / "fake_site"
FAKE_MODULES = ("chat_store_fake_plugin", "chat_store_fake_tls", "chat_store_fake_broken")


@pytest.fixture(autouse=True)
def _forget_fake_modules() -> Iterator[None]:
    yield
    for name in FAKE_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def fake_site(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake distributions installed beside everything else (core included)."""
    monkeypatch.syspath_prepend(str(FAKE_SITE))


@pytest.fixture
def only_fake_site(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment where the fake distributions are the only ones installed."""
    monkeypatch.setattr(sys, "path", [str(FAKE_SITE)])


# -- core's own schemes ------------------------------------------------------------------------


def test_memory_url_builds_an_empty_simple_store() -> None:
    store = chat_store_from_url("memory://")
    assert type(store) is SimpleChatStore
    assert store.get_keys() == []


@pytest.mark.parametrize("url", ["memory://host", "memory:///path", "memory://?x=1"])
def test_memory_url_takes_no_parameters(url: str) -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        chat_store_from_url(url)


def test_json_url_builds_a_file_store(tmp_path: Path) -> None:
    store = chat_store_from_url(f"JSON://{tmp_path}/sub dir/c.json")
    assert isinstance(store, JsonFileChatStore)
    assert store.path == str(tmp_path / "sub dir" / "c.json")


def test_core_registers_its_schemes_and_classes() -> None:
    assert registered_schemes()["memory"] == "llama-index-storage-chat-store-core"
    assert registered_schemes()["json"] == "llama-index-storage-chat-store-core"
    store = SimpleChatStore()
    store.add_message("k", ChatMessage(content="x"))
    rebuilt = chat_store_from_dict(store.to_dict())
    assert type(rebuilt) is SimpleChatStore
    assert rebuilt.count_messages("k") == 1


# -- discovery of installed plugins ------------------------------------------------------------


@pytest.mark.usefixtures("fake_site")
def test_exact_scheme_resolves_lazily() -> None:
    store = chat_store_from_url("fakea://host/x?q=1", ttl=5)
    assert type(store).__name__ == "FakeAStore"
    assert store.url == "fakea://host/x?q=1"  # type: ignore[attr-defined]
    assert store.options == {"ttl": 5}  # type: ignore[attr-defined]
    # Only the matching plugin was imported: not the other module, not the broken one.
    assert "chat_store_fake_tls" not in sys.modules


@pytest.mark.usefixtures("fake_site")
def test_exact_scheme_wins_over_the_part_before_plus() -> None:
    assert type(chat_store_from_url("fakea+tls://h")).__name__ == "FakeTlsStore"
    assert type(chat_store_from_url("fakea+other://h")).__name__ == "FakeAStore"


@pytest.mark.usefixtures("fake_site")
def test_registered_schemes_name_their_distribution() -> None:
    schemes = registered_schemes()
    assert schemes["fakea"] == "chat-store-fake-plugin-a"
    assert "chat_store_fake_plugin" not in sys.modules


@pytest.mark.usefixtures("fake_site")
def test_from_dict_finds_the_class_by_class_name() -> None:
    store = chat_store_from_dict({"class_name": "FakeAStore", "url": "u"})
    assert type(store).__name__ == "FakeAStore"
    assert store.url == "u"  # type: ignore[attr-defined]


@pytest.mark.usefixtures("fake_site")
def test_store_without_a_url_form_says_so() -> None:
    with pytest.raises(CapabilityNotSupportedError, match="NoUrlStore cannot be built from a URL"):
        chat_store_from_url("nourl://x")


# -- clashes -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_site")
def test_two_distributions_claiming_a_scheme_are_both_named() -> None:
    with pytest.raises(ConfigurationError) as info:
        chat_store_from_url("shared://x")
    assert "chat-store-fake-plugin-a" in str(info.value)
    assert "chat-store-fake-plugin-b" in str(info.value)


@pytest.mark.usefixtures("fake_site")
def test_a_plugin_claiming_a_core_scheme_clashes_with_core() -> None:
    with pytest.raises(ConfigurationError) as info:
        chat_store_from_url("memory://")
    assert "llama-index-storage-chat-store-core" in str(info.value)
    assert "chat-store-fake-plugin-b" in str(info.value)


@pytest.mark.usefixtures("fake_site")
def test_two_distributions_claiming_a_class_name_are_both_named() -> None:
    with pytest.raises(ConfigurationError, match=r"fake-plugin-a.*fake-plugin-b"):
        chat_store_from_dict({"class_name": "SharedClass"})


# -- schemes nobody installed ------------------------------------------------------------------


@pytest.mark.usefixtures("only_fake_site")
@pytest.mark.parametrize("scheme", sorted(INSTALL_HINTS))
def test_first_party_scheme_names_the_distribution_to_install(scheme: str) -> None:
    with pytest.raises(UnknownSchemeError) as info:
        chat_store_from_url(f"{scheme}://user:s3cret@host/db")
    assert f"pip install {INSTALL_HINTS[scheme]}" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.usefixtures("only_fake_site")
def test_hint_falls_back_to_the_part_before_plus() -> None:
    with pytest.raises(UnknownSchemeError, match="llama-index-storage-chat-store-redis"):
        chat_store_from_url("redis+sentinel://host")


@pytest.mark.usefixtures("only_fake_site")
def test_unknown_scheme_lists_what_is_installed() -> None:
    with pytest.raises(UnknownSchemeError, match=r"'nosuch'.*fakea") as info:
        chat_store_from_url("nosuch://x")
    assert isinstance(info.value, LookupError)


@pytest.mark.usefixtures("only_fake_site")
def test_unknown_class_name_is_an_unknown_scheme_error() -> None:
    with pytest.raises(UnknownSchemeError, match="RedisChatStore"):
        chat_store_from_dict({"class_name": "RedisChatStore"})


@pytest.mark.parametrize("url", ["", "no-scheme-here", "/abs/path.json"])
def test_url_without_scheme_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="scheme"):
        chat_store_from_url(url)


@pytest.mark.parametrize("data", [{}, {"class_name": ""}, {"class_name": 3}])
def test_dict_without_class_name_is_a_configuration_error(data: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="class_name"):
        chat_store_from_dict(data)


# -- broken plugins ----------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_site")
def test_broken_plugin_raises_backend_import_error_chained() -> None:
    with pytest.raises(BackendImportError, match="chat-store-fake-plugin-a") as info:
        chat_store_from_url("broken://x")
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert "chat_store_fake_driver_that_is_not_installed" in str(info.value)


@pytest.mark.usefixtures("fake_site")
def test_broken_plugin_found_by_class_name_raises_the_same() -> None:
    with pytest.raises(BackendImportError) as info:
        chat_store_from_dict({"class_name": "BrokenStore"})
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.usefixtures("fake_site")
def test_entry_point_naming_a_missing_class_is_a_broken_plugin() -> None:
    with pytest.raises(BackendImportError, match="DoesNotExist") as info:
        chat_store_from_url("missingattr://x")
    assert isinstance(info.value.__cause__, AttributeError)


@pytest.mark.usefixtures("fake_site")
def test_entry_point_naming_a_non_store_is_rejected() -> None:
    with pytest.raises(BackendImportError, match="not a BaseChatStore subclass"):
        chat_store_from_url("notastore://x")


# -- masking -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db?x=1", "postgresql://u:***@h:5432/db?x=1"),
        ("redis://:pw@h/0", "redis://:***@h/0"),
        ("redis://h/0", "redis://h/0"),
        ("redis://u@h/0", "redis://u@h/0"),
        ("postgresql://u:p@ss:w@h/db", "postgresql://u:***@h/db"),
    ],
)
def test_mask_url_hides_the_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_without_secrets_leaves_out_every_option_naming_one() -> None:
    """Client options whose name holds a secret word, in any case, are left out of dumps."""
    options = {
        "socket_timeout": 1.0, "ssl_password": "a", "aws_secret_access_key": "b",
        "aws_session_token": "c", "Credential": "d", "PASSWORD": "e", "region_name": "x",
    }  # fmt: skip
    assert without_secrets(options) == {"socket_timeout": 1.0, "region_name": "x"}
