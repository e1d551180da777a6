"""Real servers for the tests, as a pytest plugin (loaded through the ``pytest11`` entry point).

Each service fixture gives a server for the whole test session, found in this order:

1. a URL from the environment (``CHAT_STORE_TEST_REDIS_URL``, ...);
2. a local binary (or an emulator) started on a free port in a temp dir;
3. a testcontainers container, when a Docker engine answers;
4. otherwise the test fails with a message saying how to get the server. Never a skip:
   a green run means the code was tested.

This package holds the machinery (:func:`provide`, :class:`LocalServer`, ...) and the
LlamaIndex reference environment. The servers themselves live with their backends: a
distribution announces a pytest plugin module holding its launchers and fixtures in the
entry-point group :data:`ENTRY_POINT_GROUP` (name = the service, value = the module), and
every one installed joins this plugin when pytest starts, without editing this package.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from llama_index.storage.chat_store.testing.services._process import (
    LocalServer,
    ServiceUnavailableError,
    free_port,
    listening,
    running_as_root,
    start_python_server,
)
from llama_index.storage.chat_store.testing.services._provide import (
    docker_container,
    local,
    provide,
    service_fixture,
)
from llama_index.storage.chat_store.testing.services._reference import (
    LLAMA_INDEX_CORE,
    ReferencePython,
    llama_index_reference,
    reference_python,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "LLAMA_INDEX_CORE",
    "LocalServer",
    "ReferencePython",
    "ServiceUnavailableError",
    "docker_container",
    "free_port",
    "listening",
    "llama_index_reference",
    "local",
    "provide",
    "reference_python",
    "running_as_root",
    "service_fixture",
    "start_python_server",
]

ENTRY_POINT_GROUP = "llama_index.storage.chat_store.testing.services"
"""Where a distribution names its test-service plugin module (e.g. ``redis = "pkg.testing"``)."""


def pytest_configure(config: pytest.Config) -> None:
    """Register the service plugin of every installed distribution (see the module docstring).

    Raises:
        pytest.UsageError: A service's module cannot be imported, or two distributions claim
            one service name.
    """
    manager = config.pluginmanager
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        owner = entry.dist.name if entry.dist else "an unknown distribution"
        try:
            plugin = entry.load()
        except Exception as exc:
            raise pytest.UsageError(
                f"the test service {entry.name!r} of {owner} ({entry.value}) cannot be "
                f"imported: {type(exc).__name__}: {exc}"
            ) from exc
        name = f"chat_store_service_{entry.name}"
        claimed = manager.get_plugin(name)
        if claimed is not None and claimed is not plugin:
            raise pytest.UsageError(
                f"two distributions claim the test service {entry.name!r}: "
                f"{getattr(claimed, '__name__', claimed)} and {entry.value} ({owner})"
            )
        if not manager.is_registered(plugin):
            manager.register(plugin, name)
