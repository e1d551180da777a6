"""LlamaIndex's chat-store documentation, run on a chat store as a user would run it.

:class:`~llama_index.storage.chat_store.testing.ChatStoreConformance` includes these tests
when ``llama-index-core`` is installed, next to
:mod:`~llama_index.storage.chat_store.testing.llama_index_memory`, so every backend runs them
in its LlamaIndex test environment. Each test takes one code block of the documentation page
that needs no cloud account and runs its calls unchanged on the suite's ``store``: memory
modules, chat engines and an agent over the store, the async example, the printed output.
Where the page prints, the output is compared with what LlamaIndex's own ``SimpleChatStore``
prints for the same calls. The LLMs are llama-index-core's mocks: no network, no API key.

The last test hands messages read back from the store to a real LLM integration's offline
message conversion (``llama-index-llms-openai``), which checks LlamaIndex's own block classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from llama_index.core import Document, MockEmbedding, Settings, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import (
    AudioBlock,
    DocumentBlock,
    ImageBlock,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import ChatMessage, MessageRole, MockLLM
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.memory import ChatMemoryBuffer, ChatSummaryMemoryBuffer
from llama_index.core.storage.chat_store import BaseChatStore as LlamaIndexBaseChatStore
from llama_index.core.storage.chat_store import SimpleChatStore as LlamaIndexSimpleChatStore
from llama_index.core.tools import FunctionTool
from llama_index.storage.chat_store.core import BaseChatStore

__all__ = [
    "LlamaIndexDocsTests",
    "check_google_cloud_block",
    "check_simple_chat_engine_turn",
    "simple_chat_engine_turn",
]

_OPENAI_MISSING = (
    "this test converts messages with llama-index-llms-openai, which is not installed: install "
    "llama-index-storage-chat-store-testing[llama-index] (the extra that brings llama-index-core)"
)

_REPLY = "text text text"  # MockLLM(max_tokens=3) answers this, whatever it is asked


def _printed(run: Callable[[], object]) -> str:
    """Return what ``run()`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run()
    return out.getvalue()


def _shape(messages: Sequence[ChatMessage]) -> list[tuple[str, list[str], str | None]]:
    """Roles, block classes and text of ``messages`` (tool-call ids are random per run)."""
    return [(str(m.role.value), [type(b).__name__ for b in m.blocks], m.content) for m in messages]


def _current_time() -> str:
    """Return the time of day."""
    return "noon"


# -- the page's examples, as functions of the chat store ------------------------------------


async def _async_example(
    async_set_messages: Callable[[str, list[ChatMessage]], Awaitable[None]],
    async_get_messages: Callable[[str], Awaitable[list[ChatMessage]]],
    async_delete_last_message: Callable[[str], Awaitable[ChatMessage | None]],
) -> None:
    """The page's async example (Upstash section), on the store's three async methods.

    LlamaIndex's own stores name them ``aset_messages``, ``aget_messages`` and
    ``adelete_last_message``; the page (and ours) ``async_*``.
    """
    messages = [
        ChatMessage(content="Hello", role="user"),
        ChatMessage(content="Hi there!", role="assistant"),
    ]
    await async_set_messages("conversation1", messages)
    retrieved_messages = await async_get_messages("conversation1")
    print(retrieved_messages)
    # The page only prints; the equality is what its reader takes from the output.
    assert retrieved_messages == messages
    deleted_message = await async_delete_last_message("conversation1")
    print(f"Deleted message: {deleted_message}")


def _dynamodb_example(chat_store: LlamaIndexBaseChatStore) -> None:
    """The page's DynamoDB usage example, with its storage-independent calls only."""
    print(chat_store.get_messages("123"))
    messages = [
        ChatMessage(role=MessageRole.USER, content="Who are you?"),
        ChatMessage(role=MessageRole.ASSISTANT, content="I am your helpful AI assistant."),
    ]
    chat_store.set_messages(key="123", messages=messages)
    print(chat_store.get_messages("123"))
    message = ChatMessage(role=MessageRole.USER, content="What can you do?")
    chat_store.add_message(key="123", message=message)
    print(chat_store.get_messages("123"))


async def _agent_example(chat_store: LlamaIndexBaseChatStore) -> str:
    """The page's agent example over a ChatMemoryBuffer on ``chat_store``."""
    memory = ChatMemoryBuffer.from_defaults(
        token_limit=3000, chat_store=chat_store, chat_store_key="user1"
    )
    tools = [FunctionTool.from_defaults(fn=_current_time)]
    llm = MockFunctionCallingLLM()
    agent = FunctionAgent(tools=tools, llm=llm)
    return str(await agent.run("What time is it?", memory=memory))


def _rich_messages() -> list[ChatMessage]:
    """A conversation with image, audio, document, thinking and tool-call blocks."""
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff"
    return [
        ChatMessage(role="system", content="You are terse."),
        ChatMessage(
            role="user",
            blocks=[
                TextBlock(text="What is in these?"),
                ImageBlock(image=png, image_mimetype="image/png", detail="high"),
                ImageBlock(url="https://example.com/cat.jpg", image_mimetype="image/jpeg"),
                DocumentBlock(
                    data=b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
                    title="notes.pdf",
                    document_mimetype="application/pdf",
                ),
            ],
        ),
        ChatMessage(
            role="user", blocks=[AudioBlock(audio=b"RIFF\x24\x00\x00\x00WAVE", format="wav")]
        ),
        ChatMessage(
            role="assistant",
            blocks=[
                ThinkingBlock(content="The user wants a tool.", num_tokens=6),
                ToolCallBlock(
                    tool_call_id="call_1", tool_name="lookup", tool_kwargs={"q": "cat", "n": 2.5}
                ),
            ],
        ),
        ChatMessage(role="tool", content="a cat", additional_kwargs={"tool_call_id": "call_1"}),
        ChatMessage(role="assistant", content="A cat, a PDF and a sound."),
    ]


def simple_chat_engine_turn(chat_store: LlamaIndexBaseChatStore) -> None:
    """The page's chat engine example: ChatMemoryBuffer on ``chat_store``, one turn, printed.

    Shared by the page's blocks that differ only in how they build the store (the suite's
    test below; AlloyDB's and Cloud SQL's blocks, run by those packages).
    """
    memory = ChatMemoryBuffer.from_defaults(
        token_limit=3000,
        chat_store=chat_store,
        chat_store_key="user1",
    )

    llm = MockLLM(max_tokens=3)

    chat_engine = SimpleChatEngine(memory=memory, llm=llm, prefix_messages=[])

    response = chat_engine.chat("Hello.")

    print(response)


def check_simple_chat_engine_turn(
    chat_store: LlamaIndexBaseChatStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run :func:`simple_chat_engine_turn`; assert what it prints and what the store holds."""
    capsys.readouterr()
    simple_chat_engine_turn(chat_store)
    assert capsys.readouterr().out == f"{_REPLY}\n"
    assert [m.content for m in chat_store.get_messages("user1")] == ["Hello.", _REPLY]


def check_google_cloud_block(
    engine_class: Any,
    store_class: Any,
    capsys: pytest.CaptureFixture[str],
    *,
    table_name: str,
    **instance: str,
) -> None:
    """The page's AlloyDB / Cloud SQL block: ``from_instance``, the table, ``create_sync``, a turn.

    Args:
        engine_class: ``AlloyDBEngine`` or Cloud SQL's ``PostgresEngine``.
        store_class: ``AlloyDBChatStore`` or Cloud SQL's ``PostgresChatStore``.
        capsys: pytest's fixture (the turn's printed reply is checked).
        table_name: The page's ``TABLE_NAME``.
        instance: ``from_instance``'s keywords as the page writes them (project, region,
            instance, database, user, password; ``cluster`` for AlloyDB).
    """
    engine = engine_class.from_instance(**instance)

    engine.init_chat_store_table(table_name=table_name)

    chat_store = store_class.create_sync(
        engine=engine,
        table_name=table_name,
    )

    check_simple_chat_engine_turn(chat_store, capsys)
    chat_store.close()


class LlamaIndexDocsTests:
    """The code blocks of LlamaIndex's chat-store page that need no cloud account."""

    def test_docs_chat_memory_buffer_in_simple_chat_engine(
        self, store: BaseChatStore, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The store goes straight into ChatMemoryBuffer and a SimpleChatEngine chats on it.

        If this fails: the store is not LlamaIndex's BaseChatStore (pydantic rejects it), or
        get/add/set do not behave as ChatMemoryBuffer calls them.
        """
        check_simple_chat_engine_turn(store, capsys)

    def test_docs_chat_summary_memory_buffer_in_simple_chat_engine(
        self, store: BaseChatStore
    ) -> None:
        """The store goes straight into ChatSummaryMemoryBuffer and a chat engine chats on it.

        If this fails: the store is not LlamaIndex's BaseChatStore, or set_messages (which
        the summary buffer calls on every get) does not replace the conversation.
        """
        memory = ChatSummaryMemoryBuffer.from_defaults(
            token_limit=3000,
            chat_store=store,
            chat_store_key="user1",
            llm=MockLLM(max_tokens=3),
        )
        chat_engine = SimpleChatEngine(memory=memory, llm=MockLLM(max_tokens=3), prefix_messages=[])
        chat_engine.chat("Hello.")
        chat_engine.chat("Hello again.")
        expected = ["Hello.", _REPLY, "Hello again.", _REPLY]
        assert [m.content for m in store.get_messages("user1")] == expected
        assert [m.content for m in memory.get_all()] == expected

    # FunctionAgent's workflow machinery walks its own attributes with inspect.getmembers,
    # which trips pydantic's deprecation warnings inside LlamaIndex; none come from the store.
    @pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")
    async def test_docs_agent_runs_with_memory_on_store(self, store: BaseChatStore) -> None:
        """A FunctionAgent run with memory on the store keeps the turn as LlamaIndex's store does.

        If this fails: tool-call blocks or tool messages do not survive the store, or the
        async methods the agent's memory calls misbehave.
        """
        answer = await _agent_example(store)
        reference = LlamaIndexSimpleChatStore()
        assert answer == await _agent_example(reference)
        written = store.get_messages("user1")
        assert _shape(written) == _shape(reference.get_messages("user1"))
        assert any(isinstance(b, ToolCallBlock) for m in written for b in m.blocks)

    def test_docs_index_chat_engine_with_memory_on_store(
        self, store: BaseChatStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """index.as_chat_engine(memory=memory) chats with its history in the store.

        If this fails: the chat engine LlamaIndex picks for an index cannot use the store
        through ChatMemoryBuffer.
        """
        # Settings.llm would resolve to OpenAI (a network and an API key); the mock stands in.
        monkeypatch.setattr(Settings, "_llm", MockLLM(max_tokens=3))
        memory = ChatMemoryBuffer.from_defaults(
            token_limit=3000, chat_store=store, chat_store_key="user1"
        )
        index = VectorStoreIndex.from_documents(
            [Document(text="Chat stores keep the history of conversations.")],
            embed_model=MockEmbedding(embed_dim=8),
        )
        chat_engine = index.as_chat_engine(memory=memory)
        assert str(chat_engine.chat("Hello.")) == _REPLY
        assert [m.content for m in store.get_messages("user1")] == ["Hello.", _REPLY]

    def test_docs_async_example_prints_like_llama_index(self, store: BaseChatStore) -> None:
        """The async example (asyncio.run) prints what it prints on LlamaIndex's own store.

        If this fails: async_get_messages returns messages that are not LlamaIndex's (their
        repr differs), or async_delete_last_message returns another message.
        """
        chat_store = store
        ours = _printed(
            lambda: asyncio.run(
                _async_example(
                    chat_store.async_set_messages,
                    chat_store.async_get_messages,
                    chat_store.async_delete_last_message,
                )
            )
        )
        reference = LlamaIndexSimpleChatStore()
        theirs = _printed(
            lambda: asyncio.run(
                _async_example(
                    reference.aset_messages,
                    reference.aget_messages,
                    reference.adelete_last_message,
                )
            )
        )
        assert ours == theirs
        assert ours.startswith("[ChatMessage(role=<MessageRole.USER: 'user'>")
        assert [m.content for m in store.get_messages("conversation1")] == ["Hello"]

    def test_docs_dynamodb_example_prints_like_llama_index(self, store: BaseChatStore) -> None:
        """The DynamoDB example's calls (keyword arguments included) print as on LlamaIndex's store.

        If this fails: get_messages of a missing key is not [], set_messages/add_message do
        not take ``key=``/``messages=``/``message=``, or messages print differently.
        """
        ours = _printed(lambda: _dynamodb_example(store))
        theirs = _printed(lambda: _dynamodb_example(LlamaIndexSimpleChatStore()))
        assert ours == theirs
        assert ours.startswith("[]\n[ChatMessage(role=<MessageRole.USER: 'user'>")
        assert store.count_messages("123") == 3

    @pytest.mark.parametrize("responses_api", [False, True], ids=["chat", "responses"])
    def test_rich_messages_convert_for_openai(
        self, store: BaseChatStore, responses_api: bool
    ) -> None:
        """Image, audio, document, thinking and tool-call messages read back convert for OpenAI.

        If this fails: a block comes back as another class than LlamaIndex's, or loses a
        field (bytes, mimetype, tool arguments) that the OpenAI integration sends.
        """
        originals = _rich_messages()
        if responses_api:
            # LlamaIndex's Responses API conversion has no audio input: it refuses AudioBlock.
            originals = [
                m for m in originals if not any(isinstance(b, AudioBlock) for b in m.blocks)
            ]
        memory = ChatMemoryBuffer.from_defaults(
            token_limit=30_000, chat_store=store, chat_store_key="user1"
        )
        memory.set(originals)
        back = memory.get()
        assert back == originals
        try:
            from llama_index.llms.openai.utils import to_openai_message_dicts
        except ImportError:  # llama-index-core alone, without the extra: say what to install
            pytest.fail(_OPENAI_MISSING)
        options: dict[str, Any] = {"model": "gpt-4o", "is_responses_api": responses_api}
        converted = to_openai_message_dicts(back, **options)
        assert converted == to_openai_message_dicts(originals, **options)
