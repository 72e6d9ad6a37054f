"""Responses API wire models (msgspec Structs): the request as clients send it, the ``response``
object and the typed stream events as we send them.

Input items and tools are decoded loosely (every field optional, ``type`` a plain string) so that
what this server cannot honour (an image, a web_search tool, an unknown item type) is refused by the
translator in words naming the field, not by a decoding error about a tagged union.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]


class ContentPart(Struct):
    """``input_text`` / ``output_text`` (and, refused, ``input_image``, ``input_file``, ...)."""

    type: str
    text: str | None = None


class InputItem(Struct):
    """A ``message`` (``type`` may be left out), ``function_call``, ``function_call_output`` or
    ``reasoning``; which fields matter depends on ``type``. A reasoning item's ``content`` holds
    ``reasoning_text`` parts."""

    type: str | None = None
    role: str | None = None
    content: str | list[ContentPart] | None = None
    id: str | None = None
    status: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None
    summary: list[ContentPart] | None = None  # reasoning items
    encrypted_content: str | None = None  # reasoning items, as this server wrote it (see events.py)


class ToolIn(Struct):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceIn(Struct):
    type: str
    name: str | None = None


class FormatIn(Struct):
    type: str
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextIn(Struct):
    format: FormatIn | None = None
    verbosity: str | None = None


class ReasoningIn(Struct):
    effort: str | None = None  # how long a thinking model may think: "none" … "high"
    summary: str | None = None  # only "auto" (no summary): this server writes none
    generate_summary: str | None = None  # the deprecated name of ``summary``


class ResponsesRequest(Struct, kw_only=True):
    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    previous_response_id: str | None = None
    stream: bool = False
    store: bool = True
    tools: list[ToolIn] | None = None
    tool_choice: str | ToolChoiceIn | None = None
    parallel_tool_calls: bool | None = None
    text: TextIn | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    reasoning: ReasoningIn | None = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    truncation: str | None = None
    conversation: Any = None  # refused when set: conversations are not kept here
    background: bool | None = None  # refused when true
    # llama.cpp's sampling extensions, as on chat completions
    top_k: Annotated[int, Meta(ge=0)] = 0
    min_p: Probability = 0.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    repeat_penalty: Annotated[float, Meta(gt=0.0)] = 1.0
    seed: int | None = None
    logit_bias: dict[str, float] | None = None  # token id (a string) -> bias, as on chat completions
    ignore_eos: bool = False  # generate max_output_tokens whatever the model says (benchmarks)


# -- the response object -------------------------------------------------------------------------


class OutputText(Struct):
    text: str
    type: str = "output_text"
    annotations: list[Any] = []
    logprobs: list[Any] = []


# Output items are tagged by ``type`` (msgspec writes the tag first): the OpenAPI schema needs it.
class MessageItem(Struct, tag_field="type", tag="message"):
    id: str
    content: list[OutputText]
    status: str = "completed"
    role: str = "assistant"


class FunctionCallItem(Struct, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str = "completed"


class ReasoningText(Struct):
    """A thought's text: the content of a reasoning item, and the part of its part events."""

    text: str
    type: str = "reasoning_text"


class ReasoningItem(Struct, tag_field="type", tag="reasoning"):
    """A thinking model's thought, before the answer's items. ``summary`` stays empty (this server
    writes no summaries); ``encrypted_content`` only when ``include`` asks for it."""

    id: str
    content: list[ReasoningText]
    summary: list[Any] = []
    status: str = "completed"
    encrypted_content: str | UnsetType = UNSET


OutputItem = MessageItem | FunctionCallItem | ReasoningItem


class InputTokensDetails(Struct):
    cached_tokens: int


class OutputTokensDetails(Struct):
    reasoning_tokens: int = 0  # tokens of the thought, its markers included


class Usage(Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(Struct):
    reason: str


class ResponseError(Struct):
    code: str
    message: str


class FunctionToolOut(Struct):
    name: str
    parameters: dict[str, Any]
    description: str | None = None
    strict: bool = True
    type: str = "function"


class NamedChoiceOut(Struct):
    name: str
    type: str = "function"


class FormatOut(Struct, omit_defaults=True):
    type: str
    name: str | UnsetType = UNSET
    schema: dict[str, Any] | UnsetType = UNSET
    description: str | UnsetType = UNSET
    strict: bool | UnsetType = UNSET


class TextOut(Struct):
    format: FormatOut


class ReasoningOut(Struct):
    effort: str | None = None
    summary: str | None = None


class Response(Struct):
    """The ``response`` object; it echoes the request's settings, as OpenAI does."""

    id: str
    created_at: int
    model: str
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    output: list[OutputItem]
    instructions: str | None
    max_output_tokens: int | None
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: ReasoningOut
    store: bool
    temperature: float
    text: TextOut
    tool_choice: str | NamedChoiceOut
    tools: list[FunctionToolOut]
    top_p: float
    metadata: dict[str, str]
    user: str | None = None
    usage: Usage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    truncation: str = "disabled"
    background: bool = False
    service_tier: str = "default"
    object: str = "response"


class Deleted(Struct):
    id: str
    object: str = "response"
    deleted: bool = True


# -- stream events (each carries ``type`` and ``sequence_number``) --------------------------------


class ResponseEvent(Struct):
    """``response.created`` / ``in_progress`` / ``completed`` / ``incomplete`` / ``failed``."""

    type: str
    sequence_number: int
    response: Response


class ItemEvent(Struct):
    """``response.output_item.added`` / ``done``."""

    type: str
    sequence_number: int
    output_index: int
    item: OutputItem


class PartEvent(Struct):
    """``response.content_part.added`` / ``done``."""

    type: str
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class TextDoneEvent(Struct):
    type: str
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = []


class ReasoningDoneEvent(Struct):
    """``response.reasoning_text.done``: the thought's whole text."""

    type: str
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str


class ArgumentsDeltaEvent(Struct):
    type: str
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(Struct):
    type: str
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str
