"""A chat completions body as the neutral :class:`Conversation`: messages, tools, tool choice and
response format checked in OpenAI's terms (errors name OpenAI's fields)."""

from __future__ import annotations

import json
from typing import Any

from engine import ValidationError
from engine.chat import ToolCall
from server.conversation.thinking import effort_budget
from server.conversation.types import Conversation, OutputFormat, ThinkingChoice, Tool, ToolChoice, Turn
from server.openai import wire as w

NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def tools(body: w.ChatCompletionRequest) -> tuple[Tool, ...]:
    out: list[Tool] = []
    for i, tool in enumerate(body.tools or ()):
        if tool.type != "function":
            raise ValidationError(
                f"`tools[{i}].type` is {tool.type!r}: only function tools are supported", f"tools[{i}].type"
            )
        if tool.function is None:
            raise ValidationError(f"`tools[{i}].function` is required", f"tools[{i}].function")
        f = tool.function
        if not f.name:
            raise ValidationError(
                f"`tools[{i}].function.name` must not be empty", f"tools[{i}].function.name"
            )
        out.append(Tool(f.name, f.description, dict(f.parameters) if f.parameters else NO_PARAMETERS))
    return tuple(out)


def tool_choice(body: w.ChatCompletionRequest) -> ToolChoice:
    choice, parallel = body.tool_choice, body.parallel_tool_calls
    if choice is None:
        return ToolChoice("auto", parallel=parallel)
    if isinstance(choice, str):
        return ToolChoice(choice, parallel=parallel)
    if choice.type != "function":
        raise ValidationError(
            f"`tool_choice` of type {choice.type!r} is not supported: use 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if choice.function is None:
        raise ValidationError("`tool_choice.function` is required", "tool_choice")
    return ToolChoice("required", choice.function.name, parallel)


def output_format(body: w.ChatCompletionRequest) -> OutputFormat | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return OutputFormat("json_object")
    if fmt.json_schema is None or fmt.json_schema.schema is None:
        raise ValidationError(
            "`response_format.json_schema.schema` is required with type 'json_schema'",
            "response_format.json_schema",
        )
    return OutputFormat("json_schema", dict(fmt.json_schema.schema))


def arguments(text: str) -> Any:
    """A call's arguments as templates expect them (they ``tojson`` the object): decoded JSON, or
    the raw text when it does not decode."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def turns(body: w.ChatCompletionRequest) -> tuple[Turn, ...]:
    out: list[Turn] = []
    for i, m in enumerate(body.messages):
        content = m.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        content = content or ""
        if m.role in ("system", "user", "developer") and not content:
            raise ValidationError(f"`messages[{i}].content` must not be empty", f"messages[{i}].content")
        if m.role != "assistant" and m.tool_calls:
            raise ValidationError(
                f"`messages[{i}].tool_calls` belong to assistant messages", f"messages[{i}]"
            )
        if m.role == "tool":
            if not m.tool_call_id:
                raise ValidationError(
                    f"`messages[{i}].tool_call_id` is required in a tool message",
                    f"messages[{i}].tool_call_id",
                )
            out.append(Turn("tool", content, tool_call_id=m.tool_call_id, name=m.name))
            continue
        calls = tuple(
            ToolCall(c.id, c.function.name, arguments(c.function.arguments)) for c in m.tool_calls or ()
        )
        # OpenAI's developer messages are the system prompt of newer models: templates know "system".
        role = "system" if m.role == "developer" else m.role
        thought = m.reasoning_content if m.reasoning_content is not None else m.reasoning
        out.append(Turn(role, content, calls, name=m.name, reasoning=thought))
    return tuple(out)


# What the server itself hands the chat template: a client's kwarg may not replace it.
RESERVED_TEMPLATE_NAMES = frozenset(
    (
        "messages",
        "tools",
        "add_generation_prompt",
        "bos_token",
        "eos_token",
        "raise_exception",
        "strftime_now",
    )
)


def template_args(body: w.ChatCompletionRequest) -> dict[str, Any]:
    given = body.chat_template_kwargs or {}
    for name in given:
        if name in RESERVED_TEMPLATE_NAMES:
            field = f"chat_template_kwargs.{name}"
            raise ValidationError(f"`{field}` is set by the server and cannot be given", field)
    return dict(given)


def thinking(body: w.ChatCompletionRequest) -> ThinkingChoice:
    """``reasoning_effort``, or ``chat_template_kwargs.enable_thinking``; they must not disagree."""
    choice = effort_budget(body.reasoning_effort, "reasoning_effort")
    enable = (body.chat_template_kwargs or {}).get("enable_thinking")
    if enable is None:
        return choice or ThinkingChoice()
    if not isinstance(enable, bool):
        raise ValidationError(
            "`chat_template_kwargs.enable_thinking` must be true or false",
            "chat_template_kwargs.enable_thinking",
        )
    if choice is not None and choice.enabled != enable:
        raise ValidationError(
            f"`reasoning_effort` {body.reasoning_effort!r} contradicts "
            "`chat_template_kwargs.enable_thinking`",
            "reasoning_effort",
        )
    return choice or ThinkingChoice(enabled=enable)


def conversation(body: w.ChatCompletionRequest) -> Conversation:
    return Conversation(
        turns(body),
        tools(body),
        tool_choice(body),
        output_format(body),
        thinking=thinking(body),
        template_args=template_args(body),
    )
