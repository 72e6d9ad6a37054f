"""A conversation's tools, tool choice, output format and history, checked and resolved once.

Pure: a protocol hands in its request as a :class:`Conversation`, plus how the model writes tool
calls (its format and markers); out come the messages for the chat template, the tools it receives,
the constraint on the output and the plan the answer's parser follows. Whatever cannot be honoured
is a ValidationError naming the protocol's own field.
"""

from __future__ import annotations

import hashlib
import json

import msgspec

from engine import ChatMessage, Constraint, ValidationError
from engine.chat import ToolCall
from server.conversation.thinking import ModelThinking, template_args
from server.conversation.tool_formats import (
    COMPACT,
    ModelTools,
    ToolFormat,
    ToolPlan,
    constraint,
    generic_system_prompt,
    template_tools,
)
from server.conversation.types import Conversation, Fields, OutputFormat, ThinkingChoice


class ChatPlan(msgspec.Struct, frozen=True):
    messages: tuple[ChatMessage, ...]
    template_tools: list[dict[str, object]] | None  # ``tools`` for a template that knows them
    tools: ToolPlan | None  # set when the answer may hold tool calls
    constraint: Constraint | None
    thinking: ThinkingChoice = ThinkingChoice()
    template_args: dict[str, object] = msgspec.field(default_factory=dict)  # for the chat template

    @property
    def special_text(self) -> bool:
        # Native formats may mark calls with special tokens (<tool_call>, <|python_tag|>, [TOOL_CALLS]).
        return self.tools is not None and self.tools.format is not ToolFormat.GENERIC


def output_constraint(output: OutputFormat | None, fields: Fields) -> Constraint | None:
    """The grammar of a structured answer. Strict or not, a schema is enforced; separators are
    compact unless the schema chose its own."""
    if output is None:
        return None
    if output.kind == "json_object" or output.schema is None:
        return Constraint("json_schema", json.dumps({"type": "object", "x-guidance": COMPACT}), fields.output)
    return Constraint("json_schema", json.dumps({"x-guidance": COMPACT, **output.schema}), fields.schema)


def _mistral_id(call_id: str) -> str:
    # Mistral's templates refuse ids that are not 9 alphanumeric characters; ours are longer. A
    # stable digest keeps a call and its result paired.
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def history(conv: Conversation, fmt: ToolFormat) -> list[ChatMessage]:
    """The turns as the chat template expects them."""
    if not conv.turns:
        raise ValidationError(f"`{conv.fields.turns}` must hold at least one message", conv.fields.turns)
    ident = _mistral_id if fmt is ToolFormat.MISTRAL else (lambda i: i)
    names: dict[str, str] = {}  # call id -> function name, for tool results that do not say it
    out: list[ChatMessage] = []
    for turn in conv.turns:
        for c in turn.tool_calls:
            names[c.id] = c.name
        if turn.role == "tool":
            call = turn.tool_call_id or ""
            name = turn.name or names.get(call)
            out.append(ChatMessage("tool", turn.text, tool_call_id=ident(call), name=name))
            continue
        thought = turn.reasoning if turn.role == "assistant" else None
        calls = tuple(ToolCall(ident(c.id), c.name, c.arguments) for c in turn.tool_calls)
        if calls and fmt is ToolFormat.GENERIC:
            # A template without tool support sees the calls as the JSON it is asked to write.
            text = json.dumps(
                {"tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls]},
                ensure_ascii=False,
            )
            out.append(ChatMessage(turn.role, f"{turn.text}\n{text}" if turn.text else text, name=turn.name))
            continue
        out.append(ChatMessage(turn.role, turn.text, calls, name=turn.name, reasoning_content=thought))
    return out


def _tool_plan(conv: Conversation, fmt: ToolFormat) -> ToolPlan | None:
    """The resolved tool choice, or None when the answer holds no calls."""
    fields, choice = conv.fields, conv.tool_choice
    seen: set[str] = set()
    for tool in conv.tools:
        if tool.name in seen:
            raise ValidationError(f"`{fields.tools}` names the function {tool.name!r} twice", fields.tools)
        seen.add(tool.name)
    if choice.mode == "required" and not conv.tools:
        raise ValidationError(
            f"`{fields.tool_choice}` requires a tool call but no `{fields.tools}` are given",
            fields.tool_choice,
        )
    if choice.name is not None and choice.name not in seen:
        raise ValidationError(
            f"`{fields.tool_choice}` names the function {choice.name!r}, which is not in `{fields.tools}`",
            fields.tool_choice,
        )
    if not conv.tools or choice.mode == "none":
        return None
    if conv.output is not None:
        raise ValidationError(
            f"`{fields.output}` cannot be combined with `{fields.tools}` unless `{fields.tool_choice}` is "
            "'none': the answer is either tool calls or a plain reply",
            fields.output,
        )
    required = choice.mode == "required" or choice.name is not None
    return ToolPlan(fmt, conv.tools, required=required, named=choice.name, parallel=choice.parallel)


def plan(conv: Conversation, markers: ModelTools, thinking: ModelThinking | None = None) -> ChatPlan:
    fmt = markers.format
    tools = _tool_plan(conv, fmt)
    messages = history(conv, fmt)
    think = conv.thinking, template_args(thinking, conv.thinking, conv.template_args)
    if tools is None:
        return ChatPlan(tuple(messages), None, None, output_constraint(conv.output, conv.fields), *think)
    if fmt is not ToolFormat.GENERIC:
        return ChatPlan(tuple(messages), template_tools(tools), tools, constraint(tools, markers), *think)
    prompt = generic_system_prompt(tools)
    if messages[0].role == "system":
        first = messages[0]
        messages[0] = ChatMessage("system", f"{first.content}\n\n{prompt}", name=first.name)
    else:
        messages.insert(0, ChatMessage("system", prompt))
    return ChatPlan(tuple(messages), None, tools, constraint(tools, markers), *think)
