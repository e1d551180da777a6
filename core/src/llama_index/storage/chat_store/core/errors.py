"""The one error hierarchy every chat store raises.

Each error also derives from the builtin a caller would naturally catch, so
``except ValueError`` keeps working for code written against LlamaIndex, and
``except ChatStoreError`` catches everything a store raises on purpose.
Backends chain the driver's exception as ``__cause__``.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "AuthenticationError",
    "BackendImportError",
    "BackendUnavailableError",
    "CapabilityNotSupportedError",
    "ChatStoreError",
    "ConfigurationError",
    "ConversationNotFoundError",
    "CorruptDataError",
    "InvalidKeyError",
    "InvalidMessageError",
    "NotSentError",
    "PayloadTooLargeError",
    "SerializationError",
    "UnknownSchemeError",
    "corrupt_data_remedy",
    "removal_error",
]


class ChatStoreError(Exception):
    """Base class of every error a chat store raises on purpose."""


class ConfigurationError(ChatStoreError, ValueError):
    """The store was configured with options that cannot work together or at all."""


class InvalidKeyError(ChatStoreError, ValueError):
    """A conversation key is not a non-empty str without NUL within the backend's limit."""


class InvalidMessageError(ChatStoreError, TypeError):
    """A value given as a message is not a message."""


class ConversationNotFoundError(ChatStoreError, LookupError):
    """The conversation holds no messages (its catalog entry, metadata included, does not exist)."""


class UnknownSchemeError(ChatStoreError, LookupError):
    """No installed distribution handles a URL scheme."""


class BackendImportError(ChatStoreError, ImportError):
    """A backend's plugin or driver could not be imported."""


class BackendUnavailableError(ChatStoreError, ConnectionError):
    """The server could not be reached; the store works again once it is back."""


class NotSentError(BackendUnavailableError):
    """The request never reached the server (a refused connection): nothing was applied."""


class AuthenticationError(ChatStoreError, PermissionError):
    """The server rejected the credentials."""


class _StoredDataError(ChatStoreError):
    """An error about data as stored: where it was, and the data itself when known."""

    def __init__(
        self,
        message: str = "",
        *,
        key: str | None = None,
        position: int | None = None,
        data: str | bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.position = position
        self.data = data


class SerializationError(_StoredDataError, ValueError):
    """A message cannot be written in the requested format, or a stored one read in it.

    Raised for a message JSON cannot carry (nothing is written then), and, with
    ``llama-index-core`` installed, for a stored message LlamaIndex's model cannot hold
    (a role or block type of a later version).

    Attributes:
        key: The conversation key of the stored message, when the error is about one.
        position: Its position in the conversation, when known.
        data: The stored message as stored, when the error is about one.
    """


class PayloadTooLargeError(SerializationError):
    """A message exceeds a hard size limit of the backend; nothing was written."""


class CorruptDataError(_StoredDataError, ValueError):
    """Stored data cannot be read as messages (names the key and position, or the file).

    Attributes:
        key: The conversation key the data was read from, when known.
        position: Its position in the conversation, when known.
        data: The unreadable data as stored, when known (so a repair can keep it).
    """


class CapabilityNotSupportedError(ChatStoreError, NotImplementedError):
    """The operation needs a capability this store does not have."""


# The one rule for data a removal cannot return (see the README's "Differences from
# LlamaIndex"): reads never change anything and say how to remove what they cannot read; a
# removal removes what it was asked all the same, then raises, saying so and holding the data.

_INTACT = "; the stored data is intact"
"""How a read's SerializationError about a stored message continues (see messages.py)."""


def corrupt_data_remedy(key: str) -> str:
    """Say how to remove a conversation holding data that cannot be read.

    Every backend ends the CorruptDataError of a read that names a key with it, as
    ``" (" + corrupt_data_remedy(key) + ")"``.
    """
    return f"set_messages({key!r}, []) removes the conversation"


_E = TypeVar("_E", bound="CorruptDataError | SerializationError")


def removal_error(exc: _E, storage: str) -> _E:
    """Return the error a removal raises after removing stored data it could not return.

    A removal that meets stored data that is not a message neither skips it (the caller would
    never learn it existed) nor refuses (corrupt data must stay removable): it removes what
    it was asked, then raises this. A removal that is one script or statement learns only
    from its reply that a message is one the model in use cannot hold; it raises this for
    that SerializationError too, since the message is gone by then.

    The error has ``exc``'s type, key, position and data (``None`` where nothing was stored:
    a missing row); its text is ``exc``'s without what a read adds (``" ("`` +
    :func:`corrupt_data_remedy` + ``")"`` at its end, or that the data is intact), saying the
    data was removed and that ``data`` holds it.

    Args:
        exc: The error reading the data raised.
        storage: Where it was removed from, as a user names it ("Redis", "DynamoDB table 't'").
    """
    text = str(exc)
    if exc.key is not None:
        text = text.removesuffix(f" ({corrupt_data_remedy(exc.key)})")
    text = text.split(_INTACT, 1)[0]
    if exc.data is None:
        text += f"; removed from {storage} all the same"
    else:
        text += (
            f"; it was removed from {storage} all the same: the error's data attribute "
            "holds it as stored"
        )
    return type(exc)(text, key=exc.key, position=exc.position, data=exc.data)
