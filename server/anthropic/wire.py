"""Messages API wire models (msgspec Structs): the request as clients send it, the message and the
stream events as we send them.

Content blocks and tools are decoded loosely (``type`` a plain string, every field optional) so that
what this server cannot honour (an image, a server tool) is refused by the translator in words naming
the field, not by a decoding error.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct


class Block(Struct):
    """``text``, ``tool_use``, ``tool_result`` (its ``content`` a string or blocks), ``thinking``
    (an earlier turn's thought, shown to the template again) and ``redacted_thinking`` (accepted and
    dropped); ``image`` and ``document`` are refused."""

    type: str
    text: str | None = None
    thinking: str | None = None  # a thinking block's text (its ``signature`` is not checked)
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: bool | None = None
    cache_control: Any = None


class MessageIn(Struct):
    role: str
    content: str | list[Block]


class SystemBlock(Struct):
    text: str
    type: str = "text"
    cache_control: Any = None


class ToolIn(Struct):
    name: str
    input_schema: dict[str, Any] | None = None
    description: str | None = None
    type: str | None = None  # "custom" or absent; a server tool's versioned type is refused
    cache_control: Any = None


class ToolChoiceIn(Struct):
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool = False


class OutputFormatIn(Struct):
    type: str
    schema: dict[str, Any] | None = None


class OutputConfigIn(Struct):
    """Newer SDKs' home of ``format`` (what ``output_format`` was) and ``effort``."""

    effort: str | None = None
    format: OutputFormatIn | None = None


class ThinkingIn(Struct):
    """``enabled`` (with ``budget_tokens``), ``disabled``, ``adaptive`` or ``between_tools``; see
    ``translate.thinking``. ``display``: ``summarized`` (the default here) or ``omitted``."""

    type: str
    budget_tokens: int | None = None
    display: str | None = None


class CountTokensRequest(Struct, kw_only=True):
    """``/v1/messages/count_tokens``: a Messages body without ``max_tokens``."""

    model: str | None = None
    messages: list[MessageIn]
    system: str | list[SystemBlock] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None
    output_format: OutputFormatIn | None = None
    output_config: OutputConfigIn | None = None
    thinking: ThinkingIn | None = None  # absent: no thought, as Anthropic's API does


class MessagesRequest(CountTokensRequest, kw_only=True):
    max_tokens: Annotated[int, Meta(ge=1)]
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] = 1.0
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    ignore_eos: bool = False  # llama.cpp's extension: generate max_tokens whatever the model says


# -- the answer ----------------------------------------------------------------------------------


# Content blocks are tagged by ``type`` (msgspec writes the tag first): the OpenAPI schema needs it.
class TextOut(Struct, tag_field="type", tag="text"):
    text: str


class ToolUseOut(Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: Any


class ThinkingOut(Struct, tag_field="type", tag="thinking"):
    thinking: str
    # Anthropic's is an encrypted copy of the thought; ours only a hash of it (server/anthropic/events.py)
    signature: str


ContentOut = TextOut | ToolUseOut | ThinkingOut


class Usage(Struct):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(Struct):
    id: str
    model: str
    content: list[ContentOut]
    stop_reason: str | None
    stop_sequence: str | None
    usage: Usage
    type: str = "message"
    role: str = "assistant"


class TokenCount(Struct):
    input_tokens: int


# -- stream events -------------------------------------------------------------------------------


class MessageStart(Struct):
    message: Message
    type: str = "message_start"


class BlockStart(Struct):
    index: int
    content_block: ContentOut
    type: str = "content_block_start"


class JsonDelta(Struct):
    partial_json: str
    type: str = "input_json_delta"


class BlockDelta(Struct):
    index: int
    delta: JsonDelta
    type: str = "content_block_delta"


# A thinking block's deltas: its text, then its signature just before content_block_stop.
class ThinkingDelta(Struct, tag_field="type", tag="thinking_delta"):
    thinking: str


class SignatureDelta(Struct, tag_field="type", tag="signature_delta"):
    signature: str


class ThinkingBlockDelta(Struct):
    index: int
    delta: ThinkingDelta | SignatureDelta
    type: str = "content_block_delta"


class BlockStop(Struct):
    index: int
    type: str = "content_block_stop"


class StopDelta(Struct):
    stop_reason: str
    stop_sequence: str | None


class MessageDelta(Struct):
    delta: StopDelta
    usage: Usage
    type: str = "message_delta"
