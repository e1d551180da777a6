"""A store keeping raw message JSON per key, shared by every instance with the same name."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from llama_index.storage.chat_store.core import (
    BaseChatStore,
    ChatMessage,
    message_from_json,
    message_to_json,
)
from llama_index.storage.chat_store.core.backend import coerce_message, coerce_messages
from llama_index.storage.chat_store.core.store import check_window, window


class RawListStore(BaseChatStore):
    raw: ClassVar[dict[str, dict[str, list[str]]]] = {}
    name: str = "default"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RawListStore:
        return cls(name=urlsplit(url).netloc or "default", **options)

    @property
    def _data(self) -> dict[str, list[str]]:
        return self.raw.setdefault(self.name, {})

    def _parse(self, key: str, texts: Sequence[str], start: int) -> list[ChatMessage]:
        return [message_from_json(t, key=key, position=start + i) for i, t in enumerate(texts)]

    def get_messages(
        self, key: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ChatMessage]:
        key = self._check_key(key)
        check_window(offset, limit)
        texts = self._data.get(key, [])
        start = offset if offset >= 0 else max(0, len(texts) + offset)
        return self._parse(key, window(texts, offset, limit), start)

    def count_messages(self, key: str) -> int:
        return len(self._data.get(self._check_key(key), []))

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        texts = self._data.setdefault(self._check_key(key), [])
        text = message_to_json(coerce_message(message))
        texts.append(text) if idx is None else texts.insert(idx, text)

    def add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        new = [message_to_json(m) for m in coerce_messages(messages)]
        if new:
            self._data.setdefault(self._check_key(key), []).extend(new)

    def set_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        new = [message_to_json(m) for m in coerce_messages(messages)]
        if new:
            self._data[self._check_key(key)] = new
        else:
            self._data.pop(self._check_key(key), None)

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        texts = self._data.pop(self._check_key(key), None)
        return self._parse(key, texts, 0) if texts else None

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        texts = self._data.get(self._check_key(key), [])
        if not -len(texts) <= idx < len(texts):
            return None
        text = texts.pop(idx)
        if not texts:
            del self._data[key]
        return message_from_json(text, key=key, position=idx)

    def delete_last_message(self, key: str) -> ChatMessage | None:
        return self.delete_message(key, -1)

    def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        texts = self._data.get(self._check_key(key), [])
        removed, texts[:] = texts[: max(n, 0)], texts[max(n, 0) :]
        if not texts:
            self._data.pop(key, None)
        return self._parse(key, removed, 0)

    def iter_keys(self) -> Iterator[str]:
        yield from list(self._data)

    def clear(self) -> None:
        self._data.clear()

    def adopt(self) -> int:
        return len(self._data)
