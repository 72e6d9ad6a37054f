"""A chat request's tools, tool choice, response format and history, checked and resolved once.

Pure: the route hands in the wire body, the model's tool format and a way to look up special tokens;
out come the messages for the chat template, the tools it receives, the constraint on the output and
the plan the response parser follows. Whatever cannot be honoured is a ValidationError naming its field.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec

from engine import ChatMessage, Constraint, ValidationError
from engine.chat import ToolCall
from server import openai_wire as w
from server.tool_formats import (
    COMPACT,
    SpecialToken,
    Tool,
    ToolFormat,
    ToolPlan,
    constraint,
    generic_system_prompt,
    template_tools,
)

_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class ChatPlan(msgspec.Struct, frozen=True):
    messages: tuple[ChatMessage, ...]
    template_tools: list[dict[str, Any]] | None  # ``tools`` for a template that knows them
    tools: ToolPlan | None  # set when the answer may hold tool calls
    constraint: Constraint | None

    @property
    def special_text(self) -> bool:
        # Native formats may mark calls with special tokens (<|python_tag|>, [TOOL_CALLS]).
        return self.tools is not None and self.tools.format is not ToolFormat.GENERIC


def _tools(body: w.ChatCompletionRequest) -> tuple[Tool, ...]:
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
        if any(t.name == f.name for t in out):
            raise ValidationError(f"`tools` names the function {f.name!r} twice", "tools")
        out.append(Tool(f.name, f.description, dict(f.parameters) if f.parameters else _NO_PARAMETERS))
    return tuple(out)


def _choice(body: w.ChatCompletionRequest, tools: tuple[Tool, ...]) -> tuple[str, str | None]:
    """("none" | "auto" | "required", the named function)."""
    choice = body.tool_choice
    if choice is None:
        return ("auto" if tools else "none"), None
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise ValidationError("`tool_choice` is 'required' but no `tools` are given", "tool_choice")
        return choice, None
    if choice.type != "function":
        raise ValidationError(
            f"`tool_choice` of type {choice.type!r} is not supported: use 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if choice.function is None:
        raise ValidationError("`tool_choice.function` is required", "tool_choice")
    if not any(t.name == choice.function.name for t in tools):
        raise ValidationError(
            f"`tool_choice` names the function {choice.function.name!r}, which is not in `tools`",
            "tool_choice",
        )
    return "required", choice.function.name


def response_constraint(body: w.ChatCompletionRequest) -> Constraint | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Constraint(
            "json_schema", json.dumps({"type": "object", "x-guidance": COMPACT}), "response_format"
        )
    if fmt.json_schema is None or fmt.json_schema.schema is None:
        raise ValidationError(
            "`response_format.json_schema.schema` is required with type 'json_schema'",
            "response_format.json_schema",
        )
    # Strict or not, the schema is enforced. Compact separators unless the client chose its own.
    schema = {"x-guidance": COMPACT, **fmt.json_schema.schema}
    return Constraint("json_schema", json.dumps(schema), "response_format.json_schema.schema")


def _arguments(text: str) -> Any:
    # Templates render arguments with `tojson`: they expect the object, not its JSON text.
    try:
        return json.loads(text)
    except ValueError:
        return text


def _mistral_id(call_id: str) -> str:
    # Mistral's templates refuse ids that are not 9 alphanumeric characters; ours are longer. A
    # stable digest keeps a call and its result paired.
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def history(body: w.ChatCompletionRequest, fmt: ToolFormat) -> list[ChatMessage]:
    if not body.messages:
        raise ValidationError("`messages` must hold at least one message", "messages")
    ident = _mistral_id if fmt is ToolFormat.MISTRAL else (lambda i: i)
    names: dict[str, str] = {}  # call id -> function name, for tool results that do not say it
    out: list[ChatMessage] = []
    for i, m in enumerate(body.messages):
        content = m.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        content = content or ""
        if m.role in ("system", "user", "developer") and not content:
            raise ValidationError(f"`messages[{i}].content` must not be empty", f"messages[{i}].content")
        calls = tuple(
            ToolCall(ident(c.id), c.function.name, _arguments(c.function.arguments))
            for c in m.tool_calls or ()
        )
        if m.role != "assistant" and calls:
            raise ValidationError(
                f"`messages[{i}].tool_calls` belong to assistant messages", f"messages[{i}]"
            )
        for c, raw in zip(calls, m.tool_calls or (), strict=True):
            names[raw.id] = c.name
        if m.role == "tool":
            if not m.tool_call_id:
                raise ValidationError(
                    f"`messages[{i}].tool_call_id` is required in a tool message",
                    f"messages[{i}].tool_call_id",
                )
            name = m.name or names.get(m.tool_call_id)
            out.append(ChatMessage("tool", content, tool_call_id=ident(m.tool_call_id), name=name))
            continue
        if calls and fmt is ToolFormat.GENERIC:
            # A template without tool support sees the calls as the JSON it is asked to write.
            text = json.dumps(
                {"tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls]},
                ensure_ascii=False,
            )
            out.append(ChatMessage(m.role, (content + "\n" + text) if content else text, name=m.name))
            continue
        out.append(ChatMessage(m.role, content, calls, name=m.name))
    return out


def plan_chat(body: w.ChatCompletionRequest, fmt: ToolFormat, special_token: SpecialToken) -> ChatPlan:
    tools = _tools(body)
    choice, named = _choice(body, tools)
    output = response_constraint(body)
    if not tools or choice == "none":
        return ChatPlan(tuple(history(body, fmt)), None, None, output)
    if output is not None:
        raise ValidationError(
            "`response_format` cannot be combined with `tools` unless `tool_choice` is 'none': the answer "
            "is either tool calls or a plain reply",
            "response_format",
        )
    plan = ToolPlan(fmt, tools, required=choice == "required", named=named, parallel=body.parallel_tool_calls)
    messages = history(body, fmt)
    if fmt is not ToolFormat.GENERIC:
        return ChatPlan(tuple(messages), template_tools(plan), plan, constraint(plan, special_token))
    prompt = generic_system_prompt(plan)
    if messages[0].role == "system":
        first = messages[0]
        messages[0] = ChatMessage("system", f"{first.content}\n\n{prompt}", name=first.name)
    else:
        messages.insert(0, ChatMessage("system", prompt))
    return ChatPlan(tuple(messages), None, plan, constraint(plan, special_token))
