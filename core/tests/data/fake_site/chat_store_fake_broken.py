"""A plugin whose driver is missing: importing it fails like a broken installation."""

import chat_store_fake_driver_that_is_not_installed  # noqa: F401


class BrokenStore:
    pass
