"""OpenAI wire models (msgspec Structs): request bodies as clients send them, responses as we send them.

Unknown request fields are ignored, as OpenAI-compatible servers do, so tools that send extras work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Role = Literal["system", "user", "assistant", "developer", "tool"]


class TextPart(Struct):
    text: str
    type: Literal["text"] = "text"


class FunctionCallIn(Struct):
    name: str
    arguments: str  # JSON text, as the model produced it


class ToolCallIn(Struct):
    """A call of an earlier assistant turn, as the client sends the conversation back."""

    id: str
    function: FunctionCallIn
    type: str = "function"


class ChatMessageIn(Struct):
    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant turns
    tool_call_id: str | None = None  # tool results
    # an assistant turn's thought, as this server sent it (llama-server's and vLLM's names)
    reasoning_content: str | None = None
    reasoning: str | None = None


class FunctionDef(Struct):
    name: str
    description: str | None = None
    parameters: dict[str, object] | None = None  # a JSON schema; none: the function takes nothing
    strict: bool | None = None  # the arguments always match the schema, strict or not


class ToolDef(Struct):
    type: str  # only "function" is supported; anything else is refused naming the field
    function: FunctionDef | None = None


class ToolChoiceFunction(Struct):
    name: str


class ToolChoiceObject(Struct):
    """``{"type": "function", "function": {"name"}}``; other types (``allowed_tools``, ``custom``) are
    refused with the field named."""

    type: str
    function: ToolChoiceFunction | None = None


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceObject


class JsonSchemaFormat(Struct):
    name: str
    description: str | None = None
    schema: dict[str, object] | None = None
    strict: bool | None = None


class ResponseFormat(Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(Struct):
    include_usage: bool = False


class SamplingFields(Struct, kw_only=True):
    """Fields shared by both completion endpoints (OpenAI's, plus llama.cpp's common extensions)."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    temperature: Temperature = 1.0
    top_p: Probability = 1.0
    top_k: Annotated[int, Meta(ge=0)] = 0
    min_p: Probability = 0.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    repeat_penalty: Annotated[float, Meta(gt=0.0)] = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    n: PositiveInt = 1  # only 1 is served; the adapter says so in words
    user: str | None = None
    # token id (as a string) -> value added to its logit, -100..100
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False  # llama.cpp's extension: generate max_tokens whatever the model says


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[ChatMessageIn]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    # how long a thinking model may think: "none", "minimal", "low", "medium", "high" (see README)
    reasoning_effort: str | None = None
    # more variables for the chat template, as vLLM and llama-server take them ({"enable_thinking": false})
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(SamplingFields, kw_only=True):
    # a string, token ids, or a list of one of either (OpenAI's schema; one prompt per request here)
    # (msgspec allows one array type in a union: the adapter checks that a list is not mixed)
    prompt: str | list[str | int | list[int]]
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: PositiveInt | None = None


# -- responses -----------------------------------------------------------------------------------


class PromptTokensDetails(Struct):
    cached_tokens: int  # prompt tokens served from the prompt cache


class CompletionTokensDetails(Struct):
    reasoning_tokens: int  # tokens of the thought, its markers included


class UsageOut(Struct, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None  # for a thinking model's answers


class TopLogprobOut(Struct):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(Struct):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(Struct):
    content: list[TokenLogprobOut]


class FunctionDelta(Struct, omit_defaults=True):
    arguments: str  # always sent: "" in a call's first delta, then each fragment
    name: str | None = None


class ToolCallDelta(Struct, omit_defaults=True):
    """A call's first delta carries ``id``, ``type`` and ``function.name``; later ones only
    ``index`` and an arguments fragment."""

    index: int
    function: FunctionDelta
    id: str | None = None
    type: str | None = None


class Delta(Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    # a thought's text, under both names clients read (llama-server's and vLLM's)
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChunkChoice(Struct):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Struct):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    object: str = "chat.completion.chunk"
    usage: UsageOut | None = None


class FunctionCallOut(Struct):
    name: str
    arguments: str  # JSON text


class ToolCallOut(Struct):
    id: str
    function: FunctionCallOut
    type: str = "function"


class AssistantMessage(Struct):
    content: str | None  # null when the answer is only tool calls
    role: str = "assistant"
    # Absent (not null or []) when there are none, as OpenAI sends it.
    tool_calls: list[ToolCallOut] | UnsetType = UNSET
    refusal: str | None = None  # required (nullable) in OpenAI's schema; this server never refuses
    # a thinking model's thought (absent when there was none), under both names clients read
    reasoning_content: str | UnsetType = UNSET
    reasoning: str | UnsetType = UNSET


class ChatChoice(Struct):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut
    object: str = "chat.completion"


class CompletionLogprobs(Struct):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(Struct):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(Struct):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    object: str = "text_completion"
    usage: UsageOut | None = None


class ModelCard(Struct):
    id: str
    created: int
    owned_by: str = "tokenspout"
    object: str = "model"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"


class ErrorDetail(Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(Struct):
    error: ErrorDetail
