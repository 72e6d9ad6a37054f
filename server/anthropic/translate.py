"""A Messages request as the neutral :class:`Conversation` plus the engine request's knobs. Pure:
errors name the Messages API's own fields (``messages[1].content[0].type``)."""

from __future__ import annotations

import json
from typing import Any

from engine import GenerationRequest, SamplingParams, Thinking, ValidationError
from engine.chat import ToolCall
from server.anthropic import wire as w
from server.conversation.plan import ChatPlan
from server.conversation.prompt import seed, stop_strings
from server.conversation.schema import without_vacuous
from server.conversation.types import (
    UNLIMITED,
    Conversation,
    Fields,
    OutputFormat,
    ThinkingChoice,
    Tool,
    ToolChoice,
    Turn,
)
from server.state import Limits

FIELDS = Fields(
    turns="messages",
    tools="tools",
    tool_choice="tool_choice",
    output="output_format",
    schema="output_format.schema",
)
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
SERVER_TOOL = (
    "Anthropic's server tools (web_search, web_fetch, code_execution, bash, text_editor, computer, "
    "memory) run on Anthropic's side: declare a custom tool with `name` and `input_schema` instead"
)


def _refuse(message: str, field: str) -> ValidationError:
    return ValidationError(message, field)


def _unsupported(kind: str, field: str) -> ValidationError:
    what = "image and document blocks are" if kind in ("image", "document", "search_result") else "it is"
    return _refuse(f"`{field}` is {kind!r}: {what} not supported here", field)


def _texts(blocks: str | list[w.Block] | None, field: str) -> str:
    """The text of a tool result's content (a string or text blocks)."""
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    out = []
    for j, b in enumerate(blocks):
        if b.type != "text":
            raise _unsupported(b.type, f"{field}[{j}].type")
        out.append(b.text or "")
    return "".join(out)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def turns(body: w.CountTokensRequest) -> list[Turn]:
    out: list[Turn] = []
    system = body.system
    if isinstance(system, list):
        system = "\n\n".join(b.text for b in system)
    if system:
        out.append(Turn("system", system))
    for i, m in enumerate(body.messages):
        # The API (and Claude Code with it) also takes system messages between the turns.
        if m.role not in ("user", "assistant", "system"):
            raise _refuse(
                f"`messages[{i}].role` is {m.role!r}: use 'user', 'assistant' or 'system'",
                f"messages[{i}].role",
            )
        if isinstance(m.content, str):
            out.append(Turn(m.role, m.content))  # type: ignore[arg-type]  # checked just above
            continue
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCall] = []
        for j, b in enumerate(m.content):
            field = f"messages[{i}].content[{j}]"
            if b.type == "text":
                texts.append(b.text or "")
            elif b.type == "tool_use" and m.role == "assistant":
                if not b.id or not b.name:
                    raise _refuse(f"`{field}` needs `id` and `name`", f"{field}.id")
                calls.append(ToolCall(b.id, b.name, b.input if b.input is not None else {}))
            elif b.type == "tool_result" and m.role == "user":
                if not b.tool_use_id:
                    raise _refuse(f"`{field}.tool_use_id` is required", f"{field}.tool_use_id")
                result = _texts(b.content, f"{field}.content")
                # A template has no place for is_error: the result says it in words.
                text = f"Error: {result}" if b.is_error else result
                out.append(Turn("tool", text, tool_call_id=b.tool_use_id))
            elif b.type == "thinking" and m.role == "assistant":
                thoughts.append(b.thinking or "")  # the template may show it again (Qwen3 does)
            elif b.type in ("thinking", "redacted_thinking"):
                # Accepted and dropped: a redacted thought is Anthropic's ciphertext, nothing a model
                # here can read; a thought in a user turn has no place in any template.
                continue
            elif b.type in ("tool_use", "tool_result"):
                raise _refuse(f"`{field}` of type {b.type!r} does not belong to a {m.role} message", field)
            else:
                raise _unsupported(b.type, f"{field}.type")
        if texts or calls or m.role == "assistant":
            thought = "".join(thoughts) or None
            out.append(Turn(m.role, "".join(texts), tuple(calls), reasoning=thought))  # type: ignore[arg-type]
    return out


def tools(body: w.CountTokensRequest) -> tuple[Tool, ...]:
    out = []
    for i, t in enumerate(body.tools or ()):
        if t.type not in (None, "custom"):
            raise _refuse(f"`tools[{i}].type` is {t.type!r}: {SERVER_TOOL}", f"tools[{i}].type")
        if not t.name:
            raise _refuse(f"`tools[{i}].name` must not be empty", f"tools[{i}].name")
        if t.input_schema is None:
            raise _refuse(f"`tools[{i}].input_schema` is required", f"tools[{i}].input_schema")
        out.append(Tool(t.name, t.description, without_vacuous(t.input_schema) or NO_PARAMETERS))
    return tuple(out)


def tool_choice(body: w.CountTokensRequest) -> ToolChoice:
    c = body.tool_choice
    if c is None:
        return ToolChoice("auto")
    parallel = not c.disable_parallel_tool_use
    if c.type == "auto":
        return ToolChoice("auto", parallel=parallel)
    if c.type == "any":
        return ToolChoice("required", parallel=parallel)
    if c.type == "none":
        return ToolChoice("none")
    if c.type == "tool":
        if not c.name:
            raise _refuse("`tool_choice.name` is required with type 'tool'", "tool_choice.name")
        return ToolChoice("required", c.name, parallel)
    raise _refuse(
        f"`tool_choice.type` is {c.type!r}: use 'auto', 'any', 'tool' or 'none'", "tool_choice.type"
    )


def output_format(body: w.CountTokensRequest) -> OutputFormat | None:
    """``output_format``, or ``output_config.format`` (newer SDKs' spelling); not both."""
    config = body.output_config.format if body.output_config is not None else None
    if config is not None and body.output_format is not None:
        raise _refuse("give `output_config.format` or `output_format`, not both", "output_config.format")
    f, field = (
        (config, "output_config.format") if config is not None else (body.output_format, "output_format")
    )
    if f is None:
        return None
    if f.type != "json_schema":
        raise _refuse(f"`{field}.type` is {f.type!r}: use 'json_schema'", f"{field}.type")
    if f.schema is None:
        raise _refuse(f"`{field}.schema` is required", f"{field}.schema")
    return OutputFormat("json_schema", dict(f.schema))


# ``output_config.effort``: how long an adaptive thought may be (tokens; None: no limit but max_tokens)
EFFORT_BUDGETS: dict[str, int | None] = {
    "low": 1024,
    "medium": 4096,
    "high": None,
    "xhigh": None,
    "max": None,
}


def _effort(body: w.CountTokensRequest) -> ThinkingChoice:
    """An adaptive thought's budget: ``output_config.effort``'s, else the server's."""
    effort = body.output_config.effort if body.output_config is not None else None
    if effort is None:
        return ThinkingChoice()
    if effort not in EFFORT_BUDGETS:
        choices = ", ".join(repr(e) for e in EFFORT_BUDGETS)
        raise _refuse(f"`output_config.effort` is {effort!r}: use one of {choices}", "output_config.effort")
    budget = EFFORT_BUDGETS[effort]
    return ThinkingChoice(budget=UNLIMITED if budget is None else budget)


def thinking(body: w.CountTokensRequest) -> ThinkingChoice:
    """``thinking`` as a choice. Absent means no thought, as on Anthropic's API. ``adaptive`` ("the
    model decides how much") is ``output_config.effort``'s budget, else the server's
    ``--reasoning-budget``; without a thought, effort changes nothing here. ``between_tools`` is thinking
    off (its progress notes between tool calls are Claude's habit, not a thinking model's)."""
    t = body.thinking
    adaptive = _effort(body)  # checked even where no thought comes: it names a bad value
    if t is None or t.type in ("disabled", "between_tools"):
        return ThinkingChoice(enabled=False)
    if t.display not in (None, "summarized", "omitted"):
        raise _refuse(
            f"`thinking.display` is {t.display!r}: use 'summarized' or 'omitted'", "thinking.display"
        )
    if t.type == "adaptive":
        return adaptive
    if t.type != "enabled":
        raise _refuse(
            f"`thinking.type` is {t.type!r}: use 'enabled', 'disabled', 'adaptive' or 'between_tools'",
            "thinking.type",
        )
    max_tokens = body.max_tokens if isinstance(body, w.MessagesRequest) else None  # count_tokens has none
    return ThinkingChoice(budget=_budget(t.budget_tokens, max_tokens))


def _budget(budget: int | None, max_tokens: int | None) -> int:
    """``budget_tokens``: required, and below ``max_tokens`` as Anthropic requires (the thought is
    part of the answer). Anthropic also asks for at least 1,024; a local model's thought may be held
    to less, so any positive budget is taken."""
    field = "thinking.budget_tokens"
    if budget is None:
        raise _refuse(f"`{field}` is required with type 'enabled'", field)
    if budget < 1:
        raise _refuse(f"`{field}` must be at least 1 (this server takes budgets under 1024)", field)
    if max_tokens is not None and budget >= max_tokens:
        raise _refuse(f"`max_tokens` must be greater than `{field}` ({max_tokens} <= {budget})", field)
    return budget


def omitted(body: w.CountTokensRequest) -> bool:
    """``thinking.display: omitted``: the thinking block comes with its signature and no text."""
    return body.thinking is not None and body.thinking.display == "omitted"


def conversation(body: w.CountTokensRequest) -> Conversation:
    return Conversation(
        tuple(turns(body)),
        tools(body),
        tool_choice(body),
        output_format(body),
        FIELDS,
        thinking=thinking(body),
    )


def check_length(n_prompt: int, limits: Limits) -> None:
    """A prompt over the context, in the words Claude Code reads to compact a conversation."""
    if n_prompt > limits.max_input_tokens:
        raise _refuse(
            f"prompt is too long: {n_prompt} tokens > {limits.max_input_tokens} maximum", "messages"
        )


def sampling(body: w.MessagesRequest) -> SamplingParams:
    return SamplingParams(
        temperature=body.temperature,
        top_k=body.top_k or 0,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=seed(None),
    )


def generation_request(
    body: w.MessagesRequest,
    prompt: list[int],
    limits: Limits,
    plan: ChatPlan,
    thinking: Thinking | None = None,
) -> GenerationRequest:
    check_length(len(prompt), limits)
    # Clients send a generous max_tokens (Claude Code: 32000) meaning "at most": the answer gets
    # what the context leaves, as llama-server does, instead of a refusal.
    room = limits.max_total_tokens - len(prompt)
    return GenerationRequest(
        prompt_tokens=tuple(prompt),
        max_tokens=min(body.max_tokens, room),
        sampling=sampling(body),
        stop=stop_strings(body.stop_sequences, limits, "stop_sequences"),
        ignore_eos=body.ignore_eos,
        constraint=plan.constraint,
        special_text=plan.special_text,
        thinking=thinking,
    )
