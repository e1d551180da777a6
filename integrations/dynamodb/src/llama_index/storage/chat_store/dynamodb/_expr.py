"""Building DynamoDB expressions with placeholders for every name and value."""

from __future__ import annotations

from typing import Any

__all__ = ["Expr", "num", "text"]


def num(value: int) -> dict[str, str]:
    """Return a typed number attribute value."""
    return {"N": str(value)}


def text(value: str) -> dict[str, str]:
    """Return a typed string attribute value."""
    return {"S": value}


class Expr:
    """Placeholders for one request: ``#n`` for attribute names, ``:v`` for values.

    Every name and value goes through a placeholder, so user data never becomes
    expression syntax and reserved words (``TTL``) need no special care. Only the
    placeholders actually used end up in the request (DynamoDB rejects unused ones).
    """

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._values: dict[str, Any] = {}

    def n(self, attribute: str) -> str:
        """Return the placeholder of an attribute name."""
        for placeholder, name in self._names.items():
            if name == attribute:
                return placeholder
        placeholder = f"#n{len(self._names)}"
        self._names[placeholder] = attribute
        return placeholder

    def v(self, value: dict[str, Any]) -> str:
        """Return a placeholder for a typed attribute value."""
        placeholder = f":v{len(self._values)}"
        self._values[placeholder] = value
        return placeholder

    def params(self) -> dict[str, Any]:
        """Return the ``ExpressionAttributeNames``/``Values`` request parameters."""
        out: dict[str, Any] = {}
        if self._names:
            out["ExpressionAttributeNames"] = dict(self._names)
        if self._values:
            out["ExpressionAttributeValues"] = dict(self._values)
        return out
