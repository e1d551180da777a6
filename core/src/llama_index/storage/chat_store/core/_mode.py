"""The one switch: core runs on LlamaIndex's classes when ``llama-index-core`` is installed.

When ``llama_index.core`` is importable, every store class is a subclass of LlamaIndex's
``BaseChatStore`` and the message and block classes stores accept and return are LlamaIndex's
own, so a store goes straight into ``ChatMemoryBuffer`` and messages compare equal to the ones
written. When it is not installed, core uses its own wire-identical model
(:mod:`llama_index.storage.chat_store.core._model`) and never imports LlamaIndex. Stored data
is the same in both modes. Nothing else in the project asks which mode it runs in.

Type checkers see LlamaIndex's classes where ``llama-index-core`` is installed (as it is in
this project's development environment).
"""

from __future__ import annotations

from importlib.util import find_spec

from pydantic import BaseModel

__all__ = [
    "LLAMA_INDEX",
    "AudioBlock",
    "CachePoint",
    "ChatMessage",
    "CitableBlock",
    "CitationBlock",
    "ContentBlock",
    "DocumentBlock",
    "ImageBlock",
    "LlamaIndexBaseChatStore",
    "MessageRole",
    "TextBlock",
    "ThinkingBlock",
    "ToolCallBlock",
    "VideoBlock",
]

_MINIMUM = "0.14.24"

# find_spec runs nothing of llama_index.core: a missing package costs no import at all.
LLAMA_INDEX = find_spec("llama_index.core") is not None

if LLAMA_INDEX:
    try:
        from llama_index.core.base.llms.types import (
            AudioBlock,
            CachePoint,
            ChatMessage,
            CitableBlock,
            CitationBlock,
            ContentBlock,
            DocumentBlock,
            ImageBlock,
            MessageRole,
            TextBlock,
            ThinkingBlock,
            ToolCallBlock,
            VideoBlock,
        )
        from llama_index.core.storage.chat_store.base import (
            BaseChatStore as LlamaIndexBaseChatStore,
        )
    except ImportError as exc:  # installed, but too old to have every block class
        raise ImportError(
            f"llama-index-core is installed but this package needs llama-index-core>={_MINIMUM} "
            f"({exc}): pip install 'llama-index-core>={_MINIMUM}', or uninstall it to use the "
            "stand-alone message model"
        ) from exc
else:
    from llama_index.storage.chat_store.core._model import (  # type: ignore[assignment]
        AudioBlock,
        CachePoint,
        ChatMessage,
        CitableBlock,
        CitationBlock,
        ContentBlock,
        DocumentBlock,
        ImageBlock,
        MessageRole,
        TextBlock,
        ThinkingBlock,
        ToolCallBlock,
        VideoBlock,
    )

    class LlamaIndexBaseChatStore(BaseModel):  # type: ignore[no-redef]
        """Stands in for LlamaIndex's ``BaseChatStore`` when ``llama-index-core`` is absent."""
