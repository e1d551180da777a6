"""Core's own message model, used when ``llama-index-core`` is not installed.

Wire-identical to LlamaIndex's ``ChatMessage`` (see the project's format reference), and more
forgiving when reading: roles and block types this version does not know are kept as they are
(a role as its string, a block as an opaque dict) and written back unchanged. The legacy shape
``{"role", "content", "additional_kwargs"}`` is read too. Nothing outside core imports this
module: :mod:`llama_index.storage.chat_store.core.messages` exports the model in use.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_serializer,
    field_validator,
    model_validator,
)

__all__ = [
    "AudioBlock",
    "CachePoint",
    "ChatMessage",
    "CitableBlock",
    "CitationBlock",
    "ContentBlock",
    "DocumentBlock",
    "ImageBlock",
    "MessageRole",
    "TextBlock",
    "ThinkingBlock",
    "ToolCallBlock",
    "VideoBlock",
    "unrepresentable",
]


class MessageRole(str, Enum):
    """The role of a message's author (LlamaIndex's values)."""

    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    FUNCTION = "function"
    TOOL = "tool"
    CHATBOT = "chatbot"
    MODEL = "model"


_ROLES = {role.value: role for role in MessageRole}


def _as_base64(value: Any) -> Any:
    """Return raw bytes base64-encoded; bytes that already are base64 pass unchanged.

    LlamaIndex stores binary payloads as base64 text inside ``bytes`` fields;
    values read from JSON are strings and are taken as already encoded.
    """
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        try:
            base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return base64.b64encode(raw)
        return raw
    return value


def _as_path_str(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


_Payload = Annotated[bytes | None, BeforeValidator(_as_base64)]
_PathStr = Annotated[str | None, BeforeValidator(_as_path_str)]
_UrlStr = Annotated[str | None, BeforeValidator(lambda v: v if v is None else str(v))]


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlock(_Block):
    """Plain text."""

    block_type: Literal["text"] = "text"
    text: str


class ImageBlock(_Block):
    """An image by base64 payload, path or URL."""

    block_type: Literal["image"] = "image"
    image: _Payload = None
    path: _PathStr = None
    url: _UrlStr = None
    image_mimetype: str | None = None
    detail: str | None = None


class AudioBlock(_Block):
    """Audio by base64 payload, path or URL."""

    block_type: Literal["audio"] = "audio"
    audio: _Payload = None
    path: _PathStr = None
    url: _UrlStr = None
    format: str | None = None


class VideoBlock(_Block):
    """Video by base64 payload, path or URL."""

    block_type: Literal["video"] = "video"
    video: _Payload = None
    path: _PathStr = None
    url: _UrlStr = None
    video_mimetype: str | None = None
    detail: str | None = None
    fps: int | float | None = None


class DocumentBlock(_Block):
    """A document (PDF, text, ...) by base64 payload, path or URL."""

    block_type: Literal["document"] = "document"
    data: _Payload = None
    path: _PathStr = None
    url: _UrlStr = None
    title: str | None = "input_document"
    document_mimetype: str | None = None


class CachePoint(_Block):
    """A prompt-caching marker."""

    block_type: Literal["cache"] = "cache"
    cache_control: dict[str, Any] = Field(
        default_factory=lambda: {"type": "ephemeral", "ttl": "5m"}
    )


class ThinkingBlock(_Block):
    """Model reasoning text."""

    block_type: Literal["thinking"] = "thinking"
    content: str | None = None
    num_tokens: int | None = None
    additional_information: dict[str, Any] = Field(default_factory=dict)


class ToolCallBlock(_Block):
    """A tool call made by the model."""

    block_type: Literal["tool_call"] = "tool_call"
    tool_call_id: str | None = None
    tool_name: str
    tool_kwargs: dict[str, Any] | str = Field(default_factory=dict)


class CitableBlock(_Block):
    """Content the model may cite."""

    block_type: Literal["citable"] = "citable"
    title: str
    source: str
    content: list[ContentBlock] = Field(default_factory=list)


class CitationBlock(_Block):
    """A citation of cited content."""

    block_type: Literal["citation"] = "citation"
    cited_content: ContentBlock
    source: str
    title: str
    additional_location_info: dict[str, Any] = Field(default_factory=dict)


_BLOCK_CLASSES: dict[str, type[_Block]] = {
    cls.model_fields["block_type"].default: cls
    for cls in (
        TextBlock,
        ImageBlock,
        AudioBlock,
        VideoBlock,
        DocumentBlock,
        CachePoint,
        CitableBlock,
        CitationBlock,
        ThinkingBlock,
        ToolCallBlock,
    )
}
# Looked up once: Model.model_fields is a slow property (several µs) and runs for every block read.
_BLOCK_FIELDS = {tag: frozenset(cls.model_fields) for tag, cls in _BLOCK_CLASSES.items()}
_OPAQUE = "opaque"


class _OpaqueBlock(dict):  # type: ignore[type-arg]
    """A block of a known type whose fields did not validate, kept exactly as read."""


def _block_tag(value: Any) -> str:
    """Pick the block class for a value; anything unfamiliar stays an opaque dict."""
    # A plain dict (every block read from JSON) first: isinstance against Mapping is slow.
    if type(value) is dict or (isinstance(value, Mapping) and not isinstance(value, _OpaqueBlock)):
        fields = _BLOCK_FIELDS.get(value.get("block_type"))  # type: ignore[arg-type]
        if fields is not None and value.keys() <= fields:
            return str(value["block_type"])
    elif isinstance(value, _Block):
        return str(value.block_type)  # type: ignore[attr-defined]
    return _OPAQUE


def _keep_unreadable_block(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Keep a block whose fields do not validate as an opaque dict instead of failing."""
    try:
        return handler(value)
    except ValidationError:
        if isinstance(value, Mapping) and "block_type" in value:
            return _OpaqueBlock(value)
        raise


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[AudioBlock, Tag("audio")]
    | Annotated[VideoBlock, Tag("video")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[CachePoint, Tag("cache")]
    | Annotated[CitableBlock, Tag("citable")]
    | Annotated[CitationBlock, Tag("citation")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[ToolCallBlock, Tag("tool_call")]
    | Annotated[dict[str, Any], Tag(_OPAQUE)],
    Discriminator(_block_tag),
    WrapValidator(_keep_unreadable_block),
]
"""A content block: one of the known block classes, or an opaque dict for a block
type this version does not know (kept and written back unchanged)."""

CitableBlock.model_rebuild()
CitationBlock.model_rebuild()


def _encode_bytes(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: _encode_bytes(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_bytes(v) for v in value]
    if isinstance(value, BaseModel):
        return _encode_bytes(value.model_dump())
    return value


class ChatMessage(BaseModel):
    r"""One chat message: a role, content blocks and free-form ``additional_kwargs``.

    ``ChatMessage(role="user", content="hi")`` builds one text block. The
    ``content`` property joins the text blocks with ``"\\n"`` (``None`` when
    there are none). A role string outside :class:`MessageRole` is kept as is.
    """

    role: MessageRole | str = MessageRole.USER
    additional_kwargs: dict[str, Any] = Field(default_factory=dict)
    blocks: list[ContentBlock] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _read_legacy_content(cls, data: Any) -> Any:
        # Before LlamaIndex 0.12.3 messages had "content"; when both are given, content wins.
        if isinstance(data, dict) and "content" in data:
            data = dict(data)
            content = data.pop("content")
            if content is None:
                data["blocks"] = []
            elif isinstance(content, str):
                data["blocks"] = [TextBlock(text=content)]
            elif isinstance(content, list):
                data["blocks"] = content
            else:
                raise ValueError(
                    f"content must be a str, a list of blocks or None, not {content!r}"
                )
        return data

    @field_validator("role", mode="before")
    @classmethod
    def _known_role(cls, value: Any) -> Any:
        if isinstance(value, str) and not isinstance(value, MessageRole):
            return _ROLES.get(value, value)
        return value

    @field_validator("additional_kwargs", mode="before")
    @classmethod
    def _kwargs_none(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_serializer("role")
    def _role_value(self, role: MessageRole | str) -> str:
        return role.value if isinstance(role, MessageRole) else role

    @field_serializer("additional_kwargs")
    def _kwargs_json(self, value: dict[str, Any]) -> dict[str, Any]:
        # LlamaIndex writes bytes as base64 text and nested models as dicts.
        return _encode_bytes(value) if value else value

    @property
    def content(self) -> str | None:
        """The text blocks joined with newlines, or ``None`` when there are none."""
        texts = [b.text for b in self.blocks if isinstance(b, TextBlock)]
        return "\n".join(texts) if texts else None

    @content.setter
    def content(self, value: str) -> None:
        # LlamaIndex's rule: only a message of at most one text block has its text replaced.
        if self.blocks and not (len(self.blocks) == 1 and isinstance(self.blocks[0], TextBlock)):
            raise ValueError(
                "ChatMessage holds several blocks or a non-text block; change .blocks instead"
            )
        self.blocks = [TextBlock(text=value)]

    def __str__(self) -> str:
        role = self.role.value if isinstance(self.role, MessageRole) else self.role
        return f"{role}: {self.content}"


def unrepresentable(message: ChatMessage) -> str | None:
    """Name what LlamaIndex's ``ChatMessage`` cannot hold in ``message``, or ``None``.

    This model keeps a role outside :class:`MessageRole` as a string and an unknown block
    (or a known one with fields it does not know) as a dict; LlamaIndex rejects both.
    """
    if not isinstance(message.role, MessageRole):
        return f"role {message.role!r}"
    for block in message.blocks:
        if isinstance(block, Mapping):
            return f"block type {block.get('block_type')!r} (fields {sorted(block)})"
    return None
