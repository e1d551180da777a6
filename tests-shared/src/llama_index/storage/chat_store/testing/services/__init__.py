"""Real servers for the tests, as a pytest plugin (loaded through the ``pytest11`` entry point).

Each service fixture gives a server for the whole test session, found in this order:

1. a URL from the environment (``CHAT_STORE_TEST_REDIS_URL``, ...);
2. a local binary started on a free port in a temp dir;
3. a testcontainers container, when a Docker engine answers;
4. otherwise the test fails with a message saying how to get the server. Never a skip:
   a green run means the code was tested.

A backend adds its service as one module ``_<service>.py`` next to this one: every name in
that module's ``__all__`` is re-exported here, so its fixtures join the plugin without editing
this file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from llama_index.storage.chat_store.testing.services._process import (
    LocalServer,
    ServiceUnavailableError,
    free_port,
)
from llama_index.storage.chat_store.testing.services._provide import (
    docker_container,
    local,
    provide,
)

__all__ = [
    "LocalServer",
    "ServiceUnavailableError",
    "docker_container",
    "free_port",
    "local",
    "provide",
]

_INFRASTRUCTURE = {"_process", "_provide"}


def _collect() -> None:
    exported: dict[str, Any] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if not module_info.name.startswith("_") or module_info.name in _INFRASTRUCTURE:
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for name in getattr(module, "__all__", ()):
            exported[name] = getattr(module, name)
    globals().update(exported)
    __all__.extend(sorted(exported))


_collect()
