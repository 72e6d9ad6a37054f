"""A Responses request as the neutral :class:`Conversation` plus the engine request's knobs. Pure:
errors name the Responses API's own fields (``input[2].content[0].type``, ``text.format``)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from engine import GenerationRequest, SamplingParams, Thinking, ValidationError
from engine.chat import ToolCall
from server.conversation.plan import ChatPlan
from server.conversation.prompt import budget, logit_bias, seed
from server.conversation.schema import without_vacuous
from server.conversation.thinking import effort_budget
from server.conversation.types import (
    Conversation,
    Fields,
    OutputFormat,
    ThinkingChoice,
    Tool,
    ToolChoice,
    Turn,
)
from server.openai.responses import wire as w
from server.state import Limits

FIELDS = Fields(
    turns="input", tools="tools", tool_choice="tool_choice", output="text.format", schema="text.format.schema"
)
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
# ``encrypted_content`` of our reasoning items is this prefix and the thought in base64: not secret,
# only opaque, as clients expect (Codex sends it back with ``store: false``); the prefix tells ours
# from another server's, whose blob this server cannot read.
THOUGHT_PREFIX = "tokenspout:"
UNSUPPORTED_TOOL = (
    "only function tools are supported: web_search, file_search, computer_use_preview, "
    "code_interpreter, image_generation, mcp, local_shell, shell and custom tools run on OpenAI's side"
)


def _refuse(message: str, field: str) -> ValidationError:
    return ValidationError(message, field)


def check_settings(body: w.ResponsesRequest) -> None:
    """What this server cannot honour is refused, never ignored."""
    if body.truncation not in (None, "disabled"):
        raise _refuse(
            f"`truncation: {body.truncation!r}` is not supported: only 'disabled' (a conversation over the "
            "context is refused, not cut)",
            "truncation",
        )
    if body.conversation is not None:
        raise _refuse(
            "`conversation` is not supported: this server keeps no conversations; chain responses "
            "with `previous_response_id` instead",
            "conversation",
        )
    if body.background:
        raise _refuse("`background: true` is not supported", "background")
    check_summary(body)


def check_summary(body: w.ResponsesRequest) -> None:
    """A reasoning summary cannot be honoured (this server writes none): only "auto", which lets the
    server choose, is accepted; ``generate_summary`` is the deprecated name of the same setting."""
    settings = body.reasoning
    if settings is None:
        return
    for field, value in (("summary", settings.summary), ("generate_summary", settings.generate_summary)):
        if value not in (None, "auto"):
            raise _refuse(
                f"`reasoning.{field}` is {value!r}: this server writes no reasoning summaries; "
                "leave it out or use 'auto' (the reasoning item then carries the thought itself)",
                f"reasoning.{field}",
            )


def thinking_choice(body: w.ResponsesRequest) -> ThinkingChoice:
    effort = body.reasoning.effort if body.reasoning else None
    return effort_budget(effort, "reasoning.effort") or ThinkingChoice()


def encrypted(thought: str) -> str:
    """A thought as ``encrypted_content`` (see THOUGHT_PREFIX)."""
    return THOUGHT_PREFIX + base64.b64encode(thought.encode()).decode("ascii")


def decrypted(content: str) -> str | None:
    """The thought in our own ``encrypted_content``; None for another server's or a damaged one."""
    if not content.startswith(THOUGHT_PREFIX):
        return None
    try:
        return base64.b64decode(content.removeprefix(THOUGHT_PREFIX), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _text(content: str | list[w.ContentPart] | None, field: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type not in TEXT_PARTS:
            kind = "image and file inputs are" if part.type in ("input_image", "input_file") else "it is"
            raise _refuse(
                f"`{field}[{j}].type` is {part.type!r}: {kind} not supported (text parts only)",
                f"{field}[{j}].type",
            )
        texts.append(part.text or "")
    return "".join(texts)


def decoded(text: str) -> Any:
    """A call's arguments as templates expect them (an object), or the raw text when not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text


_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def reasoning(item: w.InputItem, field: str) -> str | None:
    """An earlier thought as the client sent it back: its text, else our ``encrypted_content``, else
    its summary (what stands for a thought whose text was not kept)."""
    text = _text(item.content, f"{field}.content")
    if not text and item.encrypted_content:
        text = decrypted(item.encrypted_content) or ""
    if not text and item.summary:
        text = "\n\n".join(part.text or "" for part in item.summary)
    return text.strip() or None


def _joined(first: str | None, second: str | None) -> str | None:
    if first and second:
        return f"{first}\n\n{second}"
    return first or second


def _message(item: w.InputItem, field: str, thought: str | None) -> Turn:
    """A message item; an assistant's carries the thought sent before it."""
    role = _ROLES.get(item.role or "")
    if role is None:
        raise _refuse(
            f"`{field}.role` is {item.role!r}: use 'user', 'assistant', 'system' or 'developer'",
            f"{field}.role",
        )
    mine = thought if role == "assistant" else None
    return Turn(role, _text(item.content, f"{field}.content"), reasoning=mine)  # type: ignore[arg-type]


def _call(item: w.InputItem, field: str) -> ToolCall:
    if not item.call_id or not item.name:
        raise _refuse(f"`{field}` needs `call_id` and `name`", f"{field}.call_id")
    return ToolCall(item.call_id, item.name, decoded(item.arguments or "{}"))


def turns(body: w.ResponsesRequest) -> list[Turn]:
    """The input as turns. Consecutive ``function_call`` items (parallel calls), and calls right after
    an assistant message, become one assistant turn, as chat templates expect them."""
    if isinstance(body.input, str):
        if not body.input:
            raise _refuse("`input` must not be empty", "input")
        return [Turn("user", body.input)]
    out: list[Turn] = []
    open_calls = False  # the last turn is an assistant turn that later calls may join
    # A reasoning item is the thought of the assistant item that follows it: held until that item
    # comes (one that no assistant item follows has no answer to go with, and is dropped).
    thought: str | None = None
    for i, item in enumerate(body.input):
        kind = item.type or ("message" if item.role else None)
        field = f"input[{i}]"
        if kind == "message":
            turn = _message(item, field, thought)
            out.append(turn)
            open_calls, thought = turn.role == "assistant", None
        elif kind == "function_call":
            call = _call(item, field)
            if open_calls:
                last = out[-1]
                joined = _joined(last.reasoning, thought)
                out[-1] = Turn("assistant", last.text, (*last.tool_calls, call), reasoning=joined)
            else:
                out.append(Turn("assistant", "", (call,), reasoning=thought))
                open_calls = True
            thought = None
        elif kind == "function_call_output":
            if not item.call_id:
                raise _refuse(f"`{field}.call_id` is required", f"{field}.call_id")
            output = _text(item.output, f"{field}.output")
            out.append(Turn("tool", output, tool_call_id=item.call_id))
            open_calls = False
        elif kind == "reasoning":
            thought = _joined(thought, reasoning(item, field))
        else:
            raise _refuse(
                f"`{field}.type` is {kind!r}: supported input items are 'message', 'function_call', "
                "'function_call_output' and 'reasoning'",
                f"{field}.type",
            )
    return out


def tools(body: w.ResponsesRequest) -> tuple[Tool, ...]:
    out = []
    for i, tool in enumerate(body.tools or ()):
        if tool.type != "function":
            raise _refuse(f"`tools[{i}].type` is {tool.type!r}: {UNSUPPORTED_TOOL}", f"tools[{i}].type")
        if not tool.name:
            raise _refuse(f"`tools[{i}].name` must not be empty", f"tools[{i}].name")
        out.append(
            Tool(
                tool.name,
                tool.description,
                without_vacuous(tool.parameters) if tool.parameters else NO_PARAMETERS,
            )
        )
    return tuple(out)


def tool_choice(body: w.ResponsesRequest) -> ToolChoice:
    choice = body.tool_choice
    parallel = body.parallel_tool_calls is not False
    if choice is None:
        return ToolChoice("auto", parallel=parallel)
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _refuse(
                f"`tool_choice` is {choice!r}: use 'none', 'auto', 'required' or "
                '{"type": "function", "name": ...}',
                "tool_choice",
            )
        return ToolChoice(choice, parallel=parallel)  # type: ignore[arg-type]  # checked just above
    if choice.type != "function" or not choice.name:
        raise _refuse(
            f"`tool_choice` of type {choice.type!r} is not supported: use 'none', 'auto', 'required' or "
            '{"type": "function", "name": ...}',
            "tool_choice",
        )
    return ToolChoice("required", choice.name, parallel)


def output_format(body: w.ResponsesRequest) -> OutputFormat | None:
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return OutputFormat("json_object")
    if fmt.type != "json_schema":
        raise _refuse(
            f"`text.format.type` is {fmt.type!r}: use 'text', 'json_object' or 'json_schema'",
            "text.format.type",
        )
    if fmt.schema is None:
        raise _refuse("`text.format.schema` is required with type 'json_schema'", "text.format.schema")
    return OutputFormat("json_schema", dict(fmt.schema))


def conversation(
    body: w.ResponsesRequest, earlier: tuple[Turn, ...] = ()
) -> tuple[Conversation, tuple[Turn, ...]]:
    """The conversation to answer, and the turns to keep for a follow-up (``earlier`` turns of the
    previous response plus this input; ``instructions`` are not carried over, as OpenAI does)."""
    check_settings(body)
    kept = (*earlier, *turns(body))
    system = (Turn("system", body.instructions),) if body.instructions else ()
    conv = Conversation(
        (*system, *kept), tools(body), tool_choice(body), output_format(body), FIELDS, thinking_choice(body)
    )
    return conv, kept


def sampling(body: w.ResponsesRequest, limits: Limits) -> SamplingParams:
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_k=body.top_k,
        top_p=1.0 if body.top_p is None else body.top_p,
        min_p=body.min_p,
        repetition_penalty=body.repeat_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        seed=seed(body.seed),
        logit_bias=logit_bias(body.logit_bias, limits.n_vocab),
    )


def generation_request(
    body: w.ResponsesRequest, prompt: list[int], limits: Limits, plan: ChatPlan, thinking: Thinking | None
) -> GenerationRequest:
    return GenerationRequest(
        prompt_tokens=tuple(prompt),
        max_tokens=budget(len(prompt), body.max_output_tokens, limits, "input", "max_output_tokens"),
        sampling=sampling(body, limits),
        ignore_eos=body.ignore_eos,
        constraint=plan.constraint,
        special_text=plan.special_text,
        thinking=thinking,
    )
