"""Store classes of the fake distributions: real stores that remember how they were built."""

from typing import Any

from llama_index.storage.chat_store.core import BaseChatStore, SimpleChatStore


class FakeAStore(SimpleChatStore):
    url: str = ""
    options: dict[str, Any] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "FakeAStore":
        return cls(url=url, options=options)


class NoUrlStore(SimpleChatStore):
    """A store class without a URL form: it keeps BaseChatStore's default from_url."""

    from_url = BaseChatStore.__dict__["from_url"]


NOT_A_STORE = object()
