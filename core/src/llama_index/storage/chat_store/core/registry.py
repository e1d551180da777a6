"""Build a chat store from a URL or a configuration dict, through installed plugins.

Each backend distribution registers its classes as entry points; nothing here
names a backend except :data:`INSTALL_HINTS` (a distribution that is not
installed cannot announce itself, so core knows where the first-party schemes
live):

.. code-block:: toml

    [project.entry-points."llama_index.storage.chat_store"]          # name = URL scheme
    redis = "llama_index.storage.chat_store.redis:RedisChatStore"
    [project.entry-points."llama_index.storage.chat_store.classes"]  # name = class_name()
    RedisChatStore = "llama_index.storage.chat_store.redis:RedisChatStore"

Only the entry point that matches is imported, so a broken or slow plugin never
affects a URL it does not handle.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from pydantic import BeforeValidator

from llama_index.storage.chat_store.core.errors import (
    BackendImportError,
    ConfigurationError,
    UnknownSchemeError,
)
from llama_index.storage.chat_store.core.store import BaseChatStore

__all__ = [
    "CLASS_GROUP",
    "INSTALL_HINTS",
    "NOT_BOOL",
    "SCHEME_GROUP",
    "chat_store_from_dict",
    "chat_store_from_url",
    "mask_url",
    "registered_schemes",
    "split_password",
    "without_secrets",
]

SCHEME_GROUP = "llama_index.storage.chat_store"
"""Entry-point group mapping a URL scheme to ``module:StoreClass``."""
CLASS_GROUP = "llama_index.storage.chat_store.classes"
"""Entry-point group mapping a store's ``class_name()`` to ``module:StoreClass``."""

_PREFIX = "llama-index-storage-chat-store-"
INSTALL_HINTS: Mapping[str, str] = {
    "redis": f"{_PREFIX}redis",
    "rediss": f"{_PREFIX}redis",
    "unix": f"{_PREFIX}redis",
    "upstash+https": f"{_PREFIX}upstash",
    "postgresql": f"{_PREFIX}postgres",
    "postgresql+asyncpg": f"{_PREFIX}postgres",
    "postgres": f"{_PREFIX}postgres",
    "yugabytedb": f"{_PREFIX}yugabytedb",
    "yugabytedb+psycopg2": f"{_PREFIX}yugabytedb",
    "alloydb": f"{_PREFIX}alloydb",
    "cloudsql": f"{_PREFIX}cloud-sql",
    "dynamodb": f"{_PREFIX}dynamodb",
    "azuretable": f"{_PREFIX}azure",
    "tablestore": f"{_PREFIX}tablestore",
}
"""First-party URL schemes and the distribution that provides each one."""


def chat_store_from_url(url: str, **options: Any) -> BaseChatStore:
    """Build a store from a URL such as ``redis://localhost:6379/0?namespace=app``.

    The scheme is looked up in the entry-point group :data:`SCHEME_GROUP`: the
    exact scheme first (``postgresql+asyncpg``), then the part before ``+``
    (``postgresql``). Only the matching plugin is imported; its class's
    ``from_url(url, **options)`` builds the store (which does not connect yet).

    Raises:
        ConfigurationError: ``url`` has no scheme, or two installed distributions
            claim the scheme (both are named).
        UnknownSchemeError: No installed distribution handles the scheme; for a
            first-party scheme the message names the distribution to install.
        BackendImportError: The plugin failed to import (the ImportError is chained).
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a chat store URL must be a str, got {type(url).__qualname__}")
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise ConfigurationError(
            f"{mask_url(url)!r} is not a chat store URL: it needs a scheme such as memory:// "
            "or redis://"
        )
    candidates = [scheme] if "+" not in scheme else [scheme, scheme.split("+", 1)[0]]
    for name in candidates:
        store_class = _load(SCHEME_GROUP, name, f"URL scheme {name!r}")
        if store_class is not None:
            return store_class.from_url(url, **options)
    hint = INSTALL_HINTS.get(scheme) or INSTALL_HINTS.get(candidates[-1])
    if hint is not None:
        raise UnknownSchemeError(
            f"URL scheme {scheme!r} needs the distribution {hint!r}, which is not installed: "
            f"pip install {hint}"
        )
    known = ", ".join(sorted(registered_schemes())) or "none"
    raise UnknownSchemeError(
        f"no installed distribution handles URL scheme {scheme!r} (installed schemes: {known}). "
        f"A backend registers its schemes in the entry-point group {SCHEME_GROUP!r}."
    )


def chat_store_from_dict(data: Mapping[str, Any], **secrets: Any) -> BaseChatStore:
    """Rebuild a store from ``store.to_dict()`` output plus the secrets it left out.

    The class is found by ``data["class_name"]`` in the entry-point group
    :data:`CLASS_GROUP`; only that plugin is imported.

    Raises:
        ConfigurationError: ``data`` has no ``class_name``, or two installed
            distributions claim it (both are named).
        UnknownSchemeError: No installed distribution registers that class name.
        BackendImportError: The plugin failed to import (the ImportError is chained).
    """
    class_name = data.get("class_name") if isinstance(data, Mapping) else None
    if not isinstance(class_name, str) or not class_name:
        raise ConfigurationError(
            "a chat store configuration needs a 'class_name' entry (the output of to_dict())"
        )
    store_class = _load(CLASS_GROUP, class_name, f"class name {class_name!r}")
    if store_class is None:
        raise UnknownSchemeError(
            f"no installed distribution registers the chat store class {class_name!r} in the "
            f"entry-point group {CLASS_GROUP!r}: install the backend that wrote this configuration"
        )
    return store_class.from_dict(dict(data), **secrets)


def registered_schemes() -> dict[str, str]:
    """Return every installed URL scheme and the distribution providing it (nothing is imported)."""
    return {ep.name: _distribution_name(ep) for ep in _entry_points(SCHEME_GROUP)}


def mask_url(url: str) -> str:
    """Return ``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


_SECRET_WORDS = ("password", "secret", "token", "credential")


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


NOT_BOOL = BeforeValidator(_not_bool)
"""A numeric option's guard (``Annotated[int, NOT_BOOL]``): ``True`` and ``False`` are refused.

Pydantic's lax mode, which URL options need for their text, takes a bool for 1 or 0:
``ttl=True`` would expire every conversation a second after its last change.
"""


def without_secrets(options: Mapping[str, Any]) -> dict[str, Any]:
    """Return client ``options`` without those whose name holds a secret, for dumps.

    A name containing ``password``, ``secret``, ``token`` or ``credential`` (any case) is
    left out: such a value must be passed again, never written out with the configuration.
    """
    return {
        name: value
        for name, value in options.items()
        if not any(word in name.lower() for word in _SECRET_WORDS)
    }


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=group))


def _distribution_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    return dist.metadata["Name"] if dist is not None else "<unknown distribution>"


def _load(group: str, name: str, what: str) -> type[BaseChatStore] | None:
    """Import the one entry point called ``name`` in ``group``; ``None`` when there is none."""
    matches = {
        (ep.value, _distribution_name(ep)): ep for ep in _entry_points(group) if ep.name == name
    }
    if not matches:
        return None
    if len(matches) > 1:
        claims = "; ".join(f"{dist} ({value})" for value, dist in sorted(matches))
        raise ConfigurationError(
            f"{what} is claimed by more than one installed distribution: {claims}. "
            "Uninstall all but one of them."
        )
    (value, dist), ep = next(iter(matches.items()))
    try:
        loaded = ep.load()
    except (ImportError, AttributeError) as exc:
        raise BackendImportError(
            f"the plugin for {what} ({value} from distribution {dist!r}) failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(loaded, type) and issubclass(loaded, BaseChatStore)):
        raise BackendImportError(
            f"the plugin for {what} ({value} from distribution {dist!r}) is not a "
            "BaseChatStore subclass"
        )
    return loaded


def split_password(url: str, *, query_wins: bool = True) -> tuple[str, str | None]:
    """Return ``url`` without its password, and the password (``None`` if it had none).

    A password may sit in the user info (``scheme://user:pw@host/...``) or in the query
    (``?password=pw``). When both are given, the query's wins (as libpq reads them), or
    with ``query_wins=False`` the user info's (as redis-py reads them). Both places are
    emptied, so the URL can be shown, dumped and logged. The rest of the URL is kept as
    written (``unix:///path`` keeps its three slashes).
    """
    parts = urlsplit(url)
    netloc, password = parts.netloc, None
    if parts.password is not None:
        password = unquote(parts.password)
        user = parts.username or ""
        host = netloc.rpartition("@")[2]
        netloc = f"{quote(unquote(user), safe='')}@{host}" if user else host
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = [value for name, value in query if name == "password"]
    if given and (query_wins or password is None):
        password = given[-1]
    kept = urlencode([(name, value) for name, value in query if name != "password"])
    text = f"{parts.scheme}://{netloc}{parts.path}" + (f"?{kept}" if kept else "")
    return text + (f"#{parts.fragment}" if parts.fragment else ""), password
