"""Quickstart: keep a conversation in a JSON file and read it back from another process.

python examples/quickstart.py write chat_store.json   # process 1
python examples/quickstart.py read chat_store.json    # process 2
"""

import sys

from llama_index.storage.chat_store.core import ChatMessage, SimpleChatStore


def write(path: str) -> None:
    """Write a conversation and persist it atomically."""
    store = SimpleChatStore.from_persist_path(path)
    store.set_messages(
        "user1",
        [
            ChatMessage(role="system", content="You are a helpful assistant."),
            ChatMessage(role="user", content="What is the capital of France?"),
            ChatMessage(role="assistant", content="Paris."),
        ],
    )
    store.add_message("user1", ChatMessage(role="user", content="And of Japan? 日本"))
    store.persist(path)
    print(f"wrote {store.count_messages('user1')} messages under 'user1' to {path}")


def read(path: str) -> None:
    """Load the file and print every conversation."""
    store = SimpleChatStore.from_persist_path(path)
    for key in store.get_keys():
        print(f"conversation {key!r}:")
        for message in store.get_messages(key):
            print(f"  {message}")
    print("last two:", [m.content for m in store.get_messages("user1", offset=-2)])


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](sys.argv[2])
