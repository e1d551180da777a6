"""SimpleChatStore's file format, persistence and LlamaIndex API."""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import pytest

from llama_index.storage.chat_store.core import (
    ChatMessage,
    CorruptDataError,
    InvalidKeyError,
    SerializationError,
    SimpleChatStore,
    message_to_json,
)

DATA = Path(__file__).parent / "data"
CURRENT = DATA.joinpath("simple_chat_store_current.json").read_text(encoding="utf-8")


def encodings() -> dict[str, str]:
    """The three encodings LlamaIndex has written over its versions."""
    spaced = json.dumps(json.loads(CURRENT))  # 0.11 - 0.14.23: ", " / ": " and \\uXXXX escapes
    return {"compact": CURRENT, "spaced": spaced, "double_encoded": json.dumps(CURRENT)}


@pytest.mark.parametrize("name", ["compact", "spaced", "double_encoded"])
def test_loads_every_llama_index_encoding(tmp_path: Path, name: str) -> None:
    path = tmp_path / "chat_store.json"
    path.write_text(encodings()[name], encoding="utf-8")
    store = SimpleChatStore.from_persist_path(str(path))
    assert store.get_keys() == ["user1", "ünïcode key/with#chars"]
    assert store.model_dump_json() == CURRENT


def test_persist_writes_llama_index_format(tmp_path: Path) -> None:
    store = SimpleChatStore.parse_raw(CURRENT)
    path = tmp_path / "nested" / "dir" / "chat_store.json"
    store.persist(persist_path=str(path))
    assert path.read_text(encoding="utf-8") == CURRENT
    assert SimpleChatStore.from_persist_path(persist_path=str(path)).json() == CURRENT


def test_llama_index_api_has_no_deprecation_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = SimpleChatStore.parse_raw(CURRENT)
        assert SimpleChatStore.parse_raw(store.json()).json() == CURRENT


def test_missing_file_loads_empty(tmp_path: Path) -> None:
    assert SimpleChatStore.from_persist_path(tmp_path / "absent.json").get_keys() == []


@pytest.mark.parametrize(
    "content", ['{"store": {"k": [{"role"', "[1, 2]", '{"other": 1}', "\x00\x01binary", '"\\"x\\""']
)
def test_corrupt_file_raises_naming_the_path(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorruptDataError, match=r"broken\.json"):
        SimpleChatStore.from_persist_path(path)


def test_failed_persist_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "chat_store.json"
    SimpleChatStore.parse_raw(CURRENT).persist(path)
    # add_message refuses such a message; the constructor takes what it is given.
    store = SimpleChatStore(
        store={"k": [ChatMessage(content="x", additional_kwargs={"bad": object()})]}
    )
    with pytest.raises(SerializationError, match="serialize"):
        store.persist(path)
    assert path.read_text(encoding="utf-8") == CURRENT
    assert [p.name for p in tmp_path.iterdir()] == ["chat_store.json"]


def test_persist_path_that_is_a_directory_raises(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(IsADirectoryError):
        SimpleChatStore(store={"k": [ChatMessage(content="x")]}).persist(tmp_path / "dir.json")


def test_persist_while_threads_write(tmp_path: Path) -> None:
    store = SimpleChatStore()
    path = tmp_path / "chat_store.json"
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set() and i < 3000:
            store.add_message(f"k{i % 7}", ChatMessage(content=str(i)))
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(20):
            store.persist(path)
            SimpleChatStore.from_persist_path(path)  # always a whole, valid file
    finally:
        stop.set()
        writer.join()


def test_keys_keep_first_insertion_order() -> None:
    store = SimpleChatStore()
    for key in ("b", "a", "c"):
        store.add_message(key, ChatMessage(content=key))
    store.delete_messages("b")
    store.add_message("b", ChatMessage(content="again"))
    assert store.get_keys() == ["a", "c", "b"]


def test_fsspec_filesystem(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    store = SimpleChatStore.parse_raw(CURRENT)
    store.persist("/chats/chat_store.json", fs=fs)
    again = SimpleChatStore.from_persist_path("/chats/chat_store.json", fs=fs)
    assert [message_to_json(m) for m in again.get_messages("user1")] == [
        message_to_json(m) for m in store.get_messages("user1")
    ]


def test_concurrent_persists_never_write_an_older_snapshot_last(tmp_path: Path) -> None:
    # Each thread appends, then persists: the file must end up with every message, since the
    # last persist to run started after every append.
    path = tmp_path / "chat_store.json"
    for round_ in range(30):
        store = SimpleChatStore()
        barrier = threading.Barrier(8)

        def work(
            i: int, store: SimpleChatStore = store, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            store.add_message("k", ChatMessage(content=f"m{i}"))
            store.persist(path)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        saved = SimpleChatStore.from_persist_path(path).get_messages("k")
        assert sorted(m.content or "" for m in saved) == [f"m{i}" for i in range(8)], round_


def test_a_key_given_to_the_constructor_is_checked_by_every_read() -> None:
    """A key no write would accept, held since construction, is refused by reads alike."""
    store = SimpleChatStore(store={"a\x00b": [ChatMessage(content="x")]})
    for read in (store.count_messages, store.get_messages):
        with pytest.raises(InvalidKeyError, match="NUL"):
            read("a\x00b")
