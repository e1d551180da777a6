"""Acme's chat store: in-memory conversations under a label, built from ``acme://LABEL``."""

from typing import Any
from urllib.parse import urlsplit

from llama_index.storage.chat_store.core import ConfigurationError, SimpleChatStore

__all__ = ["AcmeChatStore"]


class AcmeChatStore(SimpleChatStore):
    """Conversations in memory, tagged with the label from the URL."""

    label: str = "default"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "AcmeChatStore":
        parts = urlsplit(url)
        if parts.scheme != "acme" or parts.path or parts.query:
            raise ConfigurationError(f"AcmeChatStore takes 'acme://LABEL', got {url!r}")
        return cls(label=parts.netloc or "default", **options)
