"""Suite tests of the basic operations: reading, writing, windows and keys.

Mixed into :class:`~llama_index.storage.chat_store.testing.conformance.ChatStoreConformance`.
"""

from __future__ import annotations

import pytest

from llama_index.storage.chat_store.core import BaseChatStore, ChatMessage
from llama_index.storage.chat_store.testing.samples import numbered, texts

__all__ = ["BasicTests"]


class BasicTests:
    """Reads, windows, every write and its result, keys, clearing and isolation."""

    # -- reading ---------------------------------------------------------------------------

    def test_missing_key_reads_as_empty(self, store: BaseChatStore) -> None:
        """A key never written reads as an empty conversation everywhere.

        If this fails: a read raises or returns a placeholder for a missing key.
        """
        assert store.get_messages("missing") == []
        assert store.count_messages("missing") == 0
        assert store.delete_messages("missing") is None
        assert store.delete_last_message("missing") is None
        assert store.delete_message("missing", 0) is None
        assert store.delete_oldest_messages("missing", 3) == []
        assert store.get_keys() == []

    def test_messages_come_back_in_insertion_order(self, store: BaseChatStore) -> None:
        """Appended messages read back in order, equal to what was written.

        If this fails: the backend reorders (reverse range, unordered rows) or drops fields.
        """
        for message in numbered(5):
            store.add_message("k", message)
        assert texts(store.get_messages("k")) == ["m0", "m1", "m2", "m3", "m4"]
        assert store.count_messages("k") == 5

    @pytest.mark.parametrize(
        ("offset", "limit"),
        [(0, None), (0, 3), (2, None), (2, 2), (7, 5), (0, 0), (12, None), (12, 1),
         (-3, None), (-3, 2), (-12, None), (-12, 3), (-1, 1), (11, 10)],
    )  # fmt: skip
    def test_get_messages_window(
        self, store: BaseChatStore, offset: int, limit: int | None
    ) -> None:
        """get_messages(offset, limit) is all[offset:][:limit], negative offset from the end.

        If this fails: the backend's range arithmetic is off by one or mishandles negatives.
        """
        store.add_messages("k", numbered(12))
        expected = [f"m{i}" for i in range(12)][offset:]
        expected = expected if limit is None else expected[:limit]
        assert texts(store.get_messages("k", offset=offset, limit=limit)) == expected

    def test_negative_limit_is_rejected(self, store: BaseChatStore) -> None:
        """Limit < 0 raises ValueError.

        If this fails: the backend forwards a negative limit to its driver.
        """
        with pytest.raises(ValueError, match="limit"):
            store.get_messages("k", limit=-1)

    # -- writing ---------------------------------------------------------------------------

    @pytest.mark.parametrize("idx", [0, 1, 3, 5, 9, -1, -2, -5, -9])
    def test_add_message_at_index(self, store: BaseChatStore, idx: int) -> None:
        """add_message(idx=i) inserts like list.insert, including out-of-range and negative i.

        If this fails: the insert script/transaction mishandles bounds or renumbering.
        """
        store.add_messages("k", numbered(5))
        store.add_message("k", ChatMessage(role="user", content="new"), idx=idx)
        expected: list[str | None] = [f"m{i}" for i in range(5)]
        expected.insert(idx, "new")
        assert texts(store.get_messages("k")) == expected
        store.add_message("k", ChatMessage(role="user", content="tail"))
        assert texts(store.get_messages("k", offset=-1)) == ["tail"]

    def test_add_message_at_index_on_missing_key(self, store: BaseChatStore) -> None:
        """Inserting into a missing key creates it.

        If this fails: insert assumes the conversation exists.
        """
        store.add_message("k", ChatMessage(content="only"), idx=3)
        assert texts(store.get_messages("k")) == ["only"]
        assert store.get_keys() == ["k"]

    def test_add_messages_appends_batch(self, store: BaseChatStore) -> None:
        """add_messages appends in order; [] is a no-op that creates nothing.

        If this fails: the batch is written out of order or an empty batch creates a key.
        """
        store.add_messages("k", numbered(2))
        store.add_messages("k", numbered(3, start=2))
        store.add_messages("k", [])
        store.add_messages("empty", [])
        assert texts(store.get_messages("k")) == ["m0", "m1", "m2", "m3", "m4"]
        assert store.get_keys() == ["k"]

    def test_set_messages_replaces(self, store: BaseChatStore) -> None:
        """set_messages replaces the whole conversation; [] removes the key.

        If this fails: old messages survive a replace, or an empty replace leaves a key.
        """
        store.add_messages("k", numbered(4))
        store.set_messages("k", numbered(2, prefix="n"))
        assert texts(store.get_messages("k")) == ["n0", "n1"]
        store.set_messages("k", [])
        assert store.get_messages("k") == []
        assert store.get_keys() == []
        store.set_messages("fresh", numbered(1))
        assert store.count_messages("fresh") == 1

    def test_delete_messages_returns_them(self, store: BaseChatStore) -> None:
        """delete_messages removes the conversation and returns its messages in order.

        If this fails: the returned list is reversed/empty or the key survives.
        """
        store.add_messages("k", numbered(3))
        assert texts(store.delete_messages("k")) == ["m0", "m1", "m2"]
        assert store.count_messages("k") == 0
        assert store.get_keys() == []
        assert store.delete_messages("k") is None

    @pytest.mark.parametrize("idx", [0, 2, 4, -1, -3, -5])
    def test_delete_message_by_index(self, store: BaseChatStore, idx: int) -> None:
        """delete_message(i) removes and returns exactly message i, keeping the others' order.

        If this fails: the delete script removes another element or reorders the rest.
        """
        store.add_messages("k", numbered(5))
        expected: list[str | None] = [f"m{i}" for i in range(5)]
        removed = expected.pop(idx)
        got = store.delete_message("k", idx)
        assert got is not None
        assert got.content == removed
        assert texts(store.get_messages("k")) == expected

    @pytest.mark.parametrize("idx", [5, 6, 100, -6, -100])
    def test_delete_message_out_of_range(self, store: BaseChatStore, idx: int) -> None:
        """delete_message out of range returns None and changes nothing.

        If this fails: an out-of-range index raises or clamps to an end.
        """
        store.add_messages("k", numbered(5))
        assert store.delete_message("k", idx) is None
        assert store.count_messages("k") == 5

    def test_delete_last_message(self, store: BaseChatStore) -> None:
        """delete_last_message pops from the end; the key disappears when emptied.

        If this fails: the pop takes the wrong end or leaves an empty key listed.
        """
        store.add_messages("k", numbered(2))
        assert texts([store.delete_last_message("k")]) == ["m1"]  # type: ignore[list-item]
        assert texts([store.delete_last_message("k")]) == ["m0"]  # type: ignore[list-item]
        assert store.delete_last_message("k") is None
        assert store.get_keys() == []

    @pytest.mark.parametrize(("n", "kept"), [(0, 5), (2, 3), (5, 0), (9, 0)])
    def test_delete_oldest_messages(self, store: BaseChatStore, n: int, kept: int) -> None:
        """delete_oldest_messages(n) removes and returns the first n (fewer if shorter).

        If this fails: the backend removes from the wrong end or miscounts.
        """
        store.add_messages("k", numbered(5))
        removed = store.delete_oldest_messages("k", n)
        assert texts(removed) == [f"m{i}" for i in range(min(n, 5))]
        assert texts(store.get_messages("k")) == [f"m{i}" for i in range(5 - kept, 5)]
        assert (store.get_keys() == ["k"]) == (kept > 0)

    # -- keys ------------------------------------------------------------------------------

    def test_get_keys_lists_live_conversations(self, store: BaseChatStore) -> None:
        """get_keys lists each non-empty conversation once; iter_keys yields the same.

        If this fails: emptied keys stay registered, or a key is listed twice.
        """
        for key in ("a", "b", "c"):
            store.add_messages(key, numbered(2))
        store.add_message("a", ChatMessage(content="again"))
        store.delete_messages("b")
        store.add_message("d", ChatMessage(content="x"))
        store.delete_last_message("d")
        assert sorted(store.get_keys()) == ["a", "c"]
        assert sorted(store.iter_keys()) == ["a", "c"]

    def test_iter_keys_pages_through_many(self, store: BaseChatStore) -> None:
        """iter_keys yields every key even when there are more than a page of them.

        If this fails: paging stops after the first page or repeats a page.
        """
        keys = [f"key-{i:04d}" for i in range(230)]
        for key in keys:
            store.add_message(key, ChatMessage(content=key))
        listed = list(store.iter_keys())
        assert sorted(listed) == keys
        assert len(listed) == len(set(listed))

    def test_clear_removes_everything(self, store: BaseChatStore) -> None:
        """clear() removes every conversation of the store.

        If this fails: clear leaves keys or registry entries behind.
        """
        store.add_messages("a", numbered(2))
        store.add_messages("b", numbered(2))
        store.clear()
        assert store.get_keys() == []
        assert store.get_messages("a") == []

    def test_stores_are_isolated(self, store: BaseChatStore, other_store: BaseChatStore) -> None:
        """Two isolated stores never see each other's keys or messages.

        If this fails: the namespace/table prefix is not applied to every operation.
        """
        store.add_message("shared-key", ChatMessage(content="mine"))
        other_store.add_message("other-key", ChatMessage(content="theirs"))
        assert store.get_keys() == ["shared-key"]
        assert other_store.get_keys() == ["other-key"]
        assert other_store.get_messages("shared-key") == []
        other_store.clear()
        assert store.count_messages("shared-key") == 1
