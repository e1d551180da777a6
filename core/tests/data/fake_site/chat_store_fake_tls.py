"""A second plugin module, so tests can see which modules a lookup imported."""

from chat_store_fake_plugin import FakeAStore


class FakeTlsStore(FakeAStore):
    pass
