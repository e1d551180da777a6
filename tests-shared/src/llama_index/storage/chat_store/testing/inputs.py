"""Suite tests of bad input and payloads: what a store refuses, and what it keeps unchanged.

Mixed into :class:`~llama_index.storage.chat_store.testing.conformance.ChatStoreConformance`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llama_index.storage.chat_store.core import (
    MAX_KEY_BYTES,
    MAX_KEY_CHARS,
    BaseChatStore,
    ChatMessage,
    CorruptDataError,
    InvalidKeyError,
    InvalidMessageError,
    SerializationError,
    TextBlock,
)
from llama_index.storage.chat_store.core.backend import corrupt_data_remedy
from llama_index.storage.chat_store.testing.samples import (
    HOSTILE_KEYS,
    every_block_type,
    jsons,
    numbered,
    texts,
    tricky_messages,
)

__all__ = ["InputTests"]


def _nested(depth: int) -> dict[str, Any]:
    """Return ``additional_kwargs`` nested ``depth`` dicts deep."""
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


class InputTests:
    """Invalid keys and messages are refused; every payload comes back as written."""

    # -- bad input -------------------------------------------------------------------------

    @pytest.mark.parametrize("key", [None, 1, b"bytes", "", "nul\x00key", "lone \ud800 surrogate"])
    def test_invalid_keys_are_rejected(self, store: BaseChatStore, key: Any) -> None:
        """Non-str, empty, NUL and lone-surrogate keys raise InvalidKeyError from every method.

        If this fails: the method does not call the base class's key check.
        """
        message = ChatMessage(content="x")
        calls: list[Callable[[], Any]] = [
            lambda: store.get_messages(key),
            lambda: store.count_messages(key),
            lambda: store.add_message(key, message),
            lambda: store.add_messages(key, [message]),
            lambda: store.set_messages(key, [message]),
            lambda: store.delete_messages(key),
            lambda: store.delete_message(key, 0),
            lambda: store.delete_last_message(key),
            lambda: store.delete_oldest_messages(key, 1),
        ]
        for call in calls:
            with pytest.raises(InvalidKeyError):
                call()
        assert store.get_keys() == []

    def test_key_limits(self, store: BaseChatStore) -> None:
        """256 characters / 1,024 UTF-8 bytes work; beyond the store's limit is InvalidKeyError.

        If this fails: the backend's key column/encoding is too small, or the limit is unchecked.
        """
        longest = ["k" * MAX_KEY_CHARS, "😀" * (MAX_KEY_BYTES // 4)]
        for key in longest:
            store.add_message(key, ChatMessage(content=key[:5]))
            assert store.count_messages(key) == 1
        assert sorted(store.get_keys()) == sorted(longest)
        with pytest.raises(InvalidKeyError):
            store.add_message("k" * (type(store).max_key_bytes + 1), ChatMessage(content="x"))

    def test_hostile_keys_are_data(self, store: BaseChatStore) -> None:
        """Keys with quotes, wildcards, separators and unicode behave like any other key.

        If this fails: a key is interpolated into a query, pattern or path.
        """
        for i, key in enumerate(HOSTILE_KEYS):
            store.add_messages(key, numbered(i % 3 + 1, prefix=f"{i}-"))
        assert sorted(store.get_keys()) == sorted(HOSTILE_KEYS)
        for i, key in enumerate(HOSTILE_KEYS):
            assert texts(store.get_messages(key)) == [f"{i}-{j}" for j in range(i % 3 + 1)]
        store.delete_messages("nobody' OR '1'='1")
        assert len(store.get_keys()) == len(HOSTILE_KEYS) - 1

    @pytest.mark.parametrize("value", ["text", 42, None, object(), [ChatMessage(content="x")]])
    def test_non_messages_are_rejected(self, store: BaseChatStore, value: Any) -> None:
        """A value that is not a message raises InvalidMessageError and writes nothing.

        If this fails: the method does not coerce its input through core.
        """
        with pytest.raises(InvalidMessageError):
            store.add_message("k", value)
        with pytest.raises(InvalidMessageError):
            store.add_messages("k", [ChatMessage(content="ok"), value])
        with pytest.raises(InvalidMessageError):
            store.set_messages("k", [value])
        assert store.get_keys() == []

    @pytest.mark.parametrize(
        "kwargs",
        [{"o": object()}, {"s": "lone \ud800"}, _nested(230), _nested(300), _nested(5000)],
        ids=["object", "lone-surrogate", "nested-230", "nested-300", "nested-5000"],
    )
    def test_unsaveable_messages_are_rejected(
        self, store: BaseChatStore, kwargs: dict[str, Any]
    ) -> None:
        """A message JSON cannot carry raises SerializationError, writes nothing, harms nothing.

        If this fails: the store accepts what it can never write back (so a later save of
        the whole store fails) or read back (nesting JSON can carry past the reader's limit
        of about 200 levels), or a deep value escapes as a raw RecursionError.
        """
        store.add_message("k", ChatMessage(content="kept"))
        bad = ChatMessage(content="x", additional_kwargs=kwargs)
        with pytest.raises(SerializationError):
            store.add_message("k", bad)
        with pytest.raises(SerializationError):
            store.add_messages("k", [ChatMessage(content="ok"), bad])
        with pytest.raises(SerializationError):
            store.set_messages("k", [bad])
        assert texts(store.get_messages("k")) == ["kept"]
        store.add_message("k", ChatMessage(content="after"))
        assert texts(store.get_messages("k")) == ["kept", "after"]

    def test_dict_messages_are_accepted(self, store: BaseChatStore) -> None:
        """A dict in the wire shape (current or legacy) is converted to a message.

        If this fails: the method does not coerce its input through core.
        """
        legacy: Any = {"role": "user", "content": "legacy"}
        current: Any = {"role": "assistant", "blocks": [{"block_type": "text", "text": "b"}]}
        store.add_message("k", legacy)
        store.add_messages("k", [current])
        assert texts(store.get_messages("k")) == ["legacy", "b"]

    def test_corrupt_data_raises(self, make_corrupt: Callable[[str], BaseChatStore]) -> None:
        """Unreadable stored data raises CorruptDataError naming the key or file.

        A conversation's error also says how to remove it (core's one sentence).

        If this fails: the backend skips or returns garbage instead of raising, or builds
        its own error text instead of ending it with core's ``corrupt_data_remedy``.
        """
        key = "corrupt-key"
        with pytest.raises(CorruptDataError) as info:  # noqa: PT012 (either step may detect it)
            reader = make_corrupt(key)
            reader.get_messages(key)
        text = str(info.value)
        assert ".json" in text or (key in text and corrupt_data_remedy(key) in text)

    @pytest.mark.parametrize(
        "removal", ["delete_messages", "delete_last_message", "delete_message", "delete_oldest"]
    )
    def test_corrupt_data_is_never_skipped_and_can_be_removed(
        self, make_corrupt: Callable[[str], BaseChatStore], removal: str
    ) -> None:
        """A removal that meets unreadable data removes it, then raises CorruptDataError.

        The one rule on every backend: the removal does what it was asked, then the error
        names the key and position, says the data was removed and holds it as stored
        (``data``), so nothing is lost without the caller knowing and corrupt data can
        always be removed. set_messages(key, []) removes a corrupt conversation silently.

        If this fails: a delete skips the bad message, or refuses to remove it, or raises
        without saying where it was or without handing it back.
        """
        key = "corrupt-key"
        try:
            store = make_corrupt(key)
        except CorruptDataError as exc:  # a file store: the whole file is unreadable
            unreadable = str(exc)
            assert ".json" in unreadable
            return
        remove: dict[str, Callable[[], Any]] = {
            "delete_messages": lambda: store.delete_messages(key),
            "delete_last_message": lambda: store.delete_last_message(key),
            "delete_message": lambda: store.delete_message(key, 1),
            "delete_oldest": lambda: store.delete_oldest_messages(key, 2),
        }
        with pytest.raises(CorruptDataError) as info:
            remove[removal]()
        assert (info.value.key, info.value.position) == (key, 1)
        assert "removed" in str(info.value)
        assert isinstance(info.value.data, (str, bytes))
        assert info.value.data
        left = [] if removal in ("delete_messages", "delete_oldest") else ["fine"]
        assert texts(store.get_messages(key)) == left
        assert store.count_messages(key) == len(left)
        make_corrupt(key + "2")
        store.set_messages(key + "2", [])
        assert store.get_messages(key + "2") == []
        assert key + "2" not in store.get_keys()

    # -- payloads --------------------------------------------------------------------------

    def test_every_block_type_round_trips(self, store: BaseChatStore) -> None:
        """Every block type comes back byte-identical.

        If this fails: the backend stores messages through something other than core's
        serializer, or truncates/re-encodes fields.
        """
        messages = every_block_type()
        store.add_messages("k", messages)
        assert jsons(store.get_messages("k")) == jsons(messages)

    def test_tricky_payloads_round_trip(self, store: BaseChatStore) -> None:
        """Unicode, NUL, floats, big ints, bytes, tool calls, unknown roles and blocks survive.

        If this fails: a column type or encoding mangles text (JSONB drops NUL) or numbers.
        """
        messages = tricky_messages()
        for message in messages:
            store.add_message("k", message)
        assert jsons(store.get_messages("k")) == jsons(messages)
        store.set_messages("k2", messages)
        assert jsons(store.get_messages("k2")) == jsons(messages)

    def test_large_messages_round_trip(self, store: BaseChatStore) -> None:
        """A 1 MB text message and a 300-message conversation round-trip.

        If this fails: a size limit is hit silently (value splitting, batching, paging).
        """
        big = ChatMessage(role="user", content="é" * 250_000 + "x" * 500_000)
        store.add_message("big", big)
        assert jsons(store.get_messages("big")) == jsons([big])
        many = numbered(300)
        store.set_messages("many", many)
        assert store.count_messages("many") == 300
        assert texts(store.get_messages("many", offset=-20)) == [f"m{i}" for i in range(280, 300)]
        assert jsons(store.get_messages("many")) == jsons(many)

    def test_returned_messages_are_copies(self, store: BaseChatStore) -> None:
        """Changing a message after add, or a message/list returned, never changes the store.

        If this fails: the store keeps or hands out its internal objects.
        """
        original = ChatMessage(content="orig", additional_kwargs={"n": [1]})
        store.add_message("k", original)
        original.additional_kwargs["n"].append(2)
        original.blocks.append(TextBlock(text="added"))
        got = store.get_messages("k")
        got[0].additional_kwargs["n"].append(3)
        got[0].blocks[0] = TextBlock(text="changed")
        got.append(ChatMessage(content="extra"))
        again = store.get_messages("k")
        assert jsons(again) == jsons([ChatMessage(content="orig", additional_kwargs={"n": [1]})])
