"""Write the sample files in this folder with the real llama-index-core (reference venv only).

Run with the reference interpreter (llama-index-core 0.14.25, pydantic < 2.14):
    python generate_llama_index_samples.py OUTDIR
It writes messages.jsonl (one ChatMessage.model_dump_json() per line) and the
SimpleChatStore files in each historical encoding we can produce with this version.
"""
import json
import math
import sys
from pathlib import Path

from llama_index.core.base.llms.types import (
    AudioBlock, CacheControl, CachePoint, CitableBlock, CitationBlock, ChatMessage,
    DocumentBlock, ImageBlock, MessageRole, TextBlock, ThinkingBlock, ToolCallBlock, VideoBlock,
)
from llama_index.core.storage.chat_store import SimpleChatStore

out = Path(sys.argv[1])
msgs = [
    ChatMessage(role="user", content="hello"),
    ChatMessage(role=MessageRole.SYSTEM, content="You are héllo ✓ 日本語 \U0001F600"),
    ChatMessage(role="assistant", content="hi", additional_kwargs={"tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{\"a\": 1}"}}], "b": b"\x00\x01"}),
    ChatMessage(role="assistant", content=None, additional_kwargs={"f": 1.5, "g": 1e20, "h": -0.0, "i": 3, "nan": math.nan, "inf": math.inf, "nested": {"a": [1, 2.25, None, True]}}),
    ChatMessage(role="developer", content="dev"),
    ChatMessage(role="function", content="fn"),
    ChatMessage(role="tool", content="tool out", additional_kwargs={"tool_call_id": "c1", "name": "f"}),
    ChatMessage(role="chatbot", content="cb"),
    ChatMessage(role="model", content="m"),
    ChatMessage(role="user", content=""),
    ChatMessage(role="user", content="line1\nline2\t\"quoted\" \\ back </script> \u0000 \u007f \u2028"),
    ChatMessage(role="user", blocks=[TextBlock(text="a"), TextBlock(text="b")]),
    ChatMessage(role="user", blocks=[ImageBlock(url="https://e.com/a.png", image_mimetype="image/png")]),
    ChatMessage(role="user", blocks=[ImageBlock(image=b"\x89PNG\r\n\x1a\nrawbytes", image_mimetype="image/png", detail="high")]),
    ChatMessage(role="user", blocks=[AudioBlock(url="https://e.com/a.mp3", format="mp3")]),
    ChatMessage(role="user", blocks=[AudioBlock(audio=b"RIFFxxxxWAVE", format="wav")]),
    ChatMessage(role="user", blocks=[VideoBlock(url="https://e.com/v.mp4", video_mimetype="video/mp4")]),
    ChatMessage(role="user", blocks=[DocumentBlock(url="https://e.com/d.pdf", document_mimetype="application/pdf")]),
    ChatMessage(role="user", blocks=[DocumentBlock(data=b"%PDF-1.4 data", title="doc", document_mimetype="application/pdf")]),
    ChatMessage(role="user", blocks=[CachePoint(cache_control=CacheControl(type="ephemeral", ttl="5m"))]),
    ChatMessage(role="user", blocks=[CitableBlock(title="T", source="S", content=[TextBlock(text="c")])]),
    ChatMessage(role="assistant", blocks=[CitationBlock(cited_content=TextBlock(text="cc"), source="S", title="T", additional_location_info={"start": 1})]),
    ChatMessage(role="assistant", blocks=[ThinkingBlock(content="hmm", num_tokens=3), TextBlock(text="answer")]),
    ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name="f", tool_kwargs={"a": 1, "b": [1.5, "x"]})]),
    ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="c2", tool_name="g", tool_kwargs="{\"raw\": true}")]),
    ChatMessage(role="user", content="x" * 5000),
]
lines = [m.model_dump_json() for m in msgs]
(out / "messages.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
for line in lines:  # LlamaIndex itself round-trips each line
    assert ChatMessage.model_validate_json(line).model_dump_json() == line, line

store = SimpleChatStore()
store.set_messages("user1", msgs[:3])
store.add_message("ünïcode key/with#chars", msgs[1])
store.persist(str(out / "simple_chat_store_current.json"))
