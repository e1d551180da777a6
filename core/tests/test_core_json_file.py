"""JsonFileChatStore (``json://``): the conformance suite plus its file behaviour."""

from __future__ import annotations

import functools
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llama_index.storage.chat_store.core import (
    BaseChatStore,
    ChatMessage,
    ConfigurationError,
    CorruptDataError,
    JsonFileChatStore,
    SerializationError,
    SimpleChatStore,
    chat_store_from_dict,
    chat_store_from_url,
)
from llama_index.storage.chat_store.testing import ChatStoreConformance

CURRENT = (Path(__file__).parent / "data" / "simple_chat_store_current.json").read_text("utf-8")


class TestJsonFileChatStoreConformance(ChatStoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Callable[[], BaseChatStore]:
        return functools.partial(chat_store_from_url, f"json://{tmp_path}/chat_store.json")

    @pytest.fixture
    def other_store(self, tmp_path: Path) -> BaseChatStore:
        return JsonFileChatStore(path=tmp_path / "other" / "chat_store.json")

    @pytest.fixture
    def make_corrupt(self, tmp_path: Path) -> Callable[[str], BaseChatStore]:
        def corrupt(key: str) -> BaseChatStore:
            path = tmp_path / "corrupt.json"
            good = SimpleChatStore(store={key: [ChatMessage(content="fine")]}).json()
            path.write_text(good.replace("]}", ']},{"role":"user","blocks":42}', 1), "utf-8")
            return JsonFileChatStore(path=path)

        return corrupt


def test_every_change_is_on_disk_in_llama_index_format(tmp_path: Path) -> None:
    path = tmp_path / "chat_store.json"
    store = JsonFileChatStore(path=path)
    assert not path.exists()  # built without touching the disk
    store.add_messages("a", [ChatMessage(content="1"), ChatMessage(content="2")])
    store.add_message("b", ChatMessage(content="3"), idx=0)
    store.delete_last_message("a")
    expected = json.loads(
        SimpleChatStore(
            store={"a": [ChatMessage(content="1")], "b": [ChatMessage(content="3")]}
        ).json()
    )
    written = json.loads(path.read_text("utf-8"))
    # LlamaIndex's format, plus the catalog (LlamaIndex's SimpleChatStore ignores the member).
    assert set(written.pop("catalog")) == {"a", "b"}
    assert written == expected
    store.delete_message("b", 0)
    assert SimpleChatStore.from_persist_path(path).get_keys() == ["a"]
    store.clear()
    assert SimpleChatStore.from_persist_path(path).get_keys() == []
    assert [p.name for p in tmp_path.iterdir()] == ["chat_store.json"]  # no temp files left


def test_opens_a_file_llama_index_wrote(tmp_path: Path) -> None:
    path = tmp_path / "chat_store.json"
    path.write_text(CURRENT, "utf-8")
    store = chat_store_from_url(f"json://{path}")
    assert store.get_keys() == ["user1", "ünïcode key/with#chars"]
    assert JsonFileChatStore.from_persist_path(path).count_messages("user1") > 0


def test_failed_write_leaves_memory_equal_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "chat_store.json"
    store = JsonFileChatStore(path=path)
    store.add_message("k", ChatMessage(content="kept"))
    with pytest.raises(SerializationError):  # rejected before memory or file change
        store.add_message("k", ChatMessage(content="bad", additional_kwargs={"x": object()}))
    assert [m.content for m in store.get_messages("k")] == ["kept"]
    store.add_message("k", ChatMessage(content="next"))  # the store is not wedged
    assert [m.content for m in JsonFileChatStore(path=path).get_messages("k")] == ["kept", "next"]


def test_config_is_the_path_only(tmp_path: Path) -> None:
    store = JsonFileChatStore(path=tmp_path / "c.json")
    store.add_message("k", ChatMessage(content="x"))
    data = store.to_dict()
    assert data == {"path": str(tmp_path / "c.json"), "class_name": "JsonFileChatStore"}
    assert chat_store_from_dict(data).count_messages("k") == 1


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert JsonFileChatStore(path="rel.json").path == str(tmp_path / "rel.json")


@pytest.mark.parametrize(
    "url",
    ["json://host/tmp/x.json", "json:relative.json", "json://", "json:///tmp/x.json?mode=a"],
)
def test_bad_json_urls_are_rejected(url: str) -> None:
    with pytest.raises(ConfigurationError, match="json:///absolute"):
        chat_store_from_url(url)


def test_store_argument_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="add_messages"):
        JsonFileChatStore(path=tmp_path / "x.json", store={"k": [ChatMessage(content="x")]})


def test_corrupt_file_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[1, 2]", "utf-8")
    with pytest.raises(CorruptDataError, match=r"bad\.json"):
        chat_store_from_url(f"json://localhost{tmp_path}/bad.json")


def test_rewrites_keep_the_file_mode_and_new_files_follow_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "chat_store.json"
    store = JsonFileChatStore(path=path)
    store.add_message("k", ChatMessage(content="x"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o640)
    store.add_message("k", ChatMessage(content="y"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_temp_files_of_killed_writers_are_cleaned_up(tmp_path: Path) -> None:
    path = tmp_path / "chat_store.json"
    old = tmp_path / ".chat_store.json.deadbeef.tmp"
    fresh = tmp_path / ".chat_store.json.cafe.tmp"
    other = tmp_path / ".other.json.dead.tmp"
    for leftover in (old, fresh, other):
        leftover.write_text("{", encoding="utf-8")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.utime(other, (time.time() - 3600, time.time() - 3600))
    JsonFileChatStore(path=path).add_message("k", ChatMessage(content="x"))
    # A minute-old temp of this file is a dead writer's; a fresh one may be a live writer's.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["chat_store.json", fresh.name, other.name]
    )
