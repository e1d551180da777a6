"""The one error hierarchy every chat store raises.

Each error also derives from the builtin a caller would naturally catch, so
``except ValueError`` keeps working for code written against LlamaIndex, and
``except ChatStoreError`` catches everything a store raises on purpose.
Backends chain the driver's exception as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BackendImportError",
    "BackendUnavailableError",
    "CapabilityNotSupportedError",
    "ChatStoreError",
    "ConfigurationError",
    "CorruptDataError",
    "InvalidKeyError",
    "InvalidMessageError",
    "PayloadTooLargeError",
    "SerializationError",
    "UnknownSchemeError",
]


class ChatStoreError(Exception):
    """Base class of every error a chat store raises on purpose."""


class ConfigurationError(ChatStoreError, ValueError):
    """The store was configured with options that cannot work together or at all."""


class InvalidKeyError(ChatStoreError, ValueError):
    """A conversation key is not a non-empty str without NUL within the backend's limit."""


class InvalidMessageError(ChatStoreError, TypeError):
    """A value given as a message is not a message."""


class UnknownSchemeError(ChatStoreError, LookupError):
    """No installed distribution handles a URL scheme."""


class BackendImportError(ChatStoreError, ImportError):
    """A backend's plugin or driver could not be imported."""


class BackendUnavailableError(ChatStoreError, ConnectionError):
    """The server could not be reached; the store works again once it is back."""


class AuthenticationError(ChatStoreError, PermissionError):
    """The server rejected the credentials."""


class SerializationError(ChatStoreError, ValueError):
    """A message cannot be written in the requested format."""


class PayloadTooLargeError(SerializationError):
    """A message exceeds a hard size limit of the backend; nothing was written."""


class CorruptDataError(ChatStoreError, ValueError):
    """Stored data cannot be read as messages (names the key and position, or the file).

    Attributes:
        key: The conversation key the data was read from, when known.
        position: Its position in the conversation, when known.
        data: The unreadable data as stored, when known (so a repair can keep it).
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        position: int | None = None,
        data: str | bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.position = position
        self.data = data


class CapabilityNotSupportedError(ChatStoreError, NotImplementedError):
    """The operation needs a capability this store does not have."""
