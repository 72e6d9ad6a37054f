"""Which tool-call format a chat template speaks, how tools reach the prompt, and the grammar that
holds the model to that format.

Formats (detected from the template's own text, as llama-server and vLLM do):

- ``hermes``: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` (Qwen2.5, Hermes 2 Pro).
- ``llama3``: one bare JSON object ``{"name": ..., "parameters": {...}}`` (Llama 3.1 / 3.2); their
  templates render one call per assistant turn, so a reply holds at most one.
- ``mistral``: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`` (Mistral 7B v0.3, Nemo).
- ``generic``: templates that know nothing of tools (the default model's). The tools are described in
  a system message and the whole reply is JSON, either ``{"tool_calls": [...]}`` or
  ``{"response": "..."}`` (llama-server's "generic" format).

Grammars are llguidance Lark (engine ``Constraint`` kind ``lark``) or plain JSON schemas. ``auto`` is
lazy for native formats: free text until the trigger, then the structure is enforced. JSON is compact
with the separators the templates show (``", "``, ``": "``): a small model given free whitespace can
spend its whole budget on newlines.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from typing import Any

import msgspec

from engine import Constraint
from server.conversation.types import Tool

# Separators as the templates render JSON, and no free whitespace (see the module docstring).
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ToolFormat(enum.Enum):
    GENERIC = "generic"
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"


class ToolPlan(msgspec.Struct, frozen=True):
    """What one request asks of the tools: the resolved ``tool_choice`` and ``parallel_tool_calls``.
    ``named`` set means that tool must be called; ``required`` means some tool must be."""

    format: ToolFormat
    tools: tuple[Tool, ...]
    required: bool
    named: str | None = None
    parallel: bool = True

    @property
    def callable(self) -> tuple[Tool, ...]:
        return tuple(t for t in self.tools if t.name == self.named) if self.named else self.tools

    @property
    def max_calls(self) -> int | None:
        # Llama 3.x templates raise on more than one call per turn; a reply must stay renderable.
        return 1 if not self.parallel or self.format is ToolFormat.LLAMA3 else None


_LLAMA3_TOOLS = re.compile(r"\btools\b")


def detect(template: str) -> ToolFormat:
    """The tool-call format ``template`` (a Jinja chat template's source) was trained on."""
    if "<tool_call>" in template:
        return ToolFormat.HERMES
    if "[TOOL_CALLS]" in template:
        return ToolFormat.MISTRAL
    if "<|start_header_id|>" in template and _LLAMA3_TOOLS.search(template):
        return ToolFormat.LLAMA3
    return ToolFormat.GENERIC


# -- schemas ---------------------------------------------------------------------------------------


def _call_schema(tool: Tool, args_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, args_key: tool.parameters},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def _one_of_calls(plan: ToolPlan, args_key: str) -> dict[str, Any]:
    calls = [_call_schema(t, args_key) for t in plan.callable]
    schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {**schema, "x-guidance": COMPACT}


def _calls_array(plan: ToolPlan, args_key: str) -> dict[str, Any]:
    calls = [_call_schema(t, args_key) for t in plan.callable]
    array: dict[str, Any] = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    array["minItems"] = 1
    if plan.max_calls is not None:
        array["maxItems"] = plan.max_calls
    return array


def generic_schema(plan: ToolPlan) -> dict[str, Any]:
    calls = {
        "type": "object",
        "properties": {"tool_calls": _calls_array(plan, "arguments")},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    if plan.required:
        return {**calls, "x-guidance": COMPACT}
    response = {
        "type": "object",
        "properties": {"response": {"type": "string"}},
        "required": ["response"],
        "additionalProperties": False,
    }
    return {"anyOf": [calls, response], "x-guidance": COMPACT}


# -- prompts ---------------------------------------------------------------------------------------


def template_tools(plan: ToolPlan) -> list[dict[str, Any]]:
    """``tools`` as templates expect them (OpenAI's shape, which Hugging Face templates read)."""
    out = []
    for t in plan.tools:
        function: dict[str, Any] = {"name": t.name}
        function["description"] = t.description or ""
        function["parameters"] = t.parameters
        out.append({"type": "function", "function": function})
    return out


def generic_system_prompt(plan: ToolPlan) -> str:
    """The instructions a template without tool support gets in its system message."""
    tools = json.dumps(template_tools(plan), ensure_ascii=False)
    call = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}'
    if plan.required:
        how = f"Respond with JSON only, calling one or more of the tools: {call}"
        if plan.named:
            how = f'Respond with JSON only, calling the tool "{plan.named}": {call}'
    else:
        how = (
            f"Respond with JSON only: either {call} to call tools, "
            'or {"response": "<your answer>"} to answer directly.'
        )
    return f"You can call these tools:\n{tools}\n\n{how}"


# -- markers ---------------------------------------------------------------------------------------

# What each format writes before (and after) its calls.
MARKERS: dict[ToolFormat, tuple[str, ...]] = {
    ToolFormat.HERMES: ("<tool_call>", "</tool_call>"),
    ToolFormat.LLAMA3: ("<|python_tag|>",),
    ToolFormat.MISTRAL: ("[TOOL_CALLS]",),
    ToolFormat.GENERIC: (),
}

SpecialToken = Callable[[str], int | None]


class ModelTools(msgspec.Struct, frozen=True):
    """How the served model writes tool calls, decided once at start-up from its chat template and
    its vocabulary: the format, and which of its markers are tokens of their own (Qwen2.5's
    ``<tool_call>`` is token 151657). A grammar must name such a marker by its id: the same text
    spelled in ordinary tokens is another output, which the model never writes."""

    format: ToolFormat
    special: dict[str, int]  # marker text -> its token id

    def marker(self, text: str) -> str:
        """The marker as a Lark grammar names it: its token, or its text."""
        token = self.special.get(text)
        return f"<[{token}]>" if token is not None else json.dumps(text)

    def describe(self) -> str:
        """For the start-up log, e.g. ``hermes, markers are tokens 151657/151658``."""
        markers = MARKERS[self.format]
        if not markers:
            return f"{self.format.value} (the tools are described in a system message; the answer is JSON)"
        if all(m in self.special for m in markers):
            ids = "/".join(str(self.special[m]) for m in markers)
            return f"{self.format.value}, markers are tokens {ids}"
        return f"{self.format.value}, markers are text ({' '.join(markers)})"


def model_tools(template: str, special_token: SpecialToken) -> ModelTools:
    fmt = detect(template)
    special = {m: t for m in MARKERS[fmt] if (t := special_token(m)) is not None}
    return ModelTools(fmt, special)


# -- grammars --------------------------------------------------------------------------------------


def _lark_json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(schema, ensure_ascii=False)


def _lark(*rules: str) -> Constraint:
    return Constraint("lark", "\n".join(rules) + "\n", "tools")


# JSON's white space, as llguidance's flexible layout allows it.
_WS = r"[ \t\r\n]*"
# Before a bare call: white space, or a Markdown fence (```json), as models write them.
_LEAD = r"[ \t\r\n]+|[ \t\r\n]*```(json)?[ \t\r\n]*"
FREE_LAYOUT: dict[str, Any] = {"whitespace_flexible": True}


def constraint(plan: ToolPlan, markers: ModelTools) -> Constraint:
    """The grammar for ``plan``: ``required`` and named choices constrain from the first token;
    ``auto`` leaves the answer free until a call begins, then holds the call to its tool's schema."""
    if plan.format is ToolFormat.GENERIC:
        return Constraint("json_schema", json.dumps(generic_schema(plan), ensure_ascii=False), "tools")
    if plan.format is ToolFormat.LLAMA3:
        return _llama3(plan, markers)
    if plan.format is ToolFormat.HERMES:
        return _hermes(plan, markers)
    return _mistral(plan, markers)


def _llama3(plan: ToolPlan, markers: ModelTools) -> Constraint:
    call = _lark_json(_one_of_calls(plan, "parameters"))
    # <|python_tag|> may open a call where it is a token of its own (text cannot produce it).
    tag = f"{markers.marker('<|python_tag|>')}? " if "<|python_tag|>" in markers.special else ""
    if plan.required:
        return _lark(f"start: {tag}call", f"call: {call}")
    # A plain answer may not start with "{": that is where a call starts (llguidance's own Llama
    # 3.1 example).
    return _lark(f"start: TEXT | {tag}call", "TEXT: /[^{](.|\\n)*/", f"call: {call}")


def _hermes(plan: ToolPlan, markers: ModelTools) -> Constraint:
    open_, close = markers.marker("<tool_call>"), markers.marker("</tool_call>")
    more = "" if plan.max_calls == 1 else ' ("\\n" tagged)*'
    rules = [
        f'tagged: {open_} "\\n" call "\\n" {close}',
        # Qwen2.5 writes a newline after its last </tool_call>, then ends its turn.
        f'calls: tagged{more} "\\n"?',
        f"call: {_lark_json(_one_of_calls(plan, 'arguments'))}",
    ]
    if plan.required:
        return _lark("start: calls", *rules)
    # auto: free text, calls after it, or calls as small models write them without the markers: a
    # bare {"name": ...} object at the start of the answer (often in a ```json fence, often laid out
    # over several lines). A text answer may not open with the bare call of a declared tool: once one
    # has begun, its arguments follow the tool's schema.
    rules += [f"TEXT: /(?s:.*)/ & ~/(?s:({_LEAD})?{_opening(plan)}.*)/", *_bare_calls(plan)]
    if "<tool_call>" in markers.special:  # text cannot produce the token: no laziness needed
        return _lark("start: TEXT | TEXT? calls | bare", *rules)
    # The marker is text: any text until the first "<tool_call>", then only calls (llguidance's
    # tool-calling pattern).
    head = 'head[lazy]: TEXT "<tool_call>"'
    after = f'after: "\\n" call "\\n" {close}{more} "\\n"?'
    return _lark("start: TEXT | head after | bare", head, after, *rules)


def _opening(plan: ToolPlan, name: str | None = None) -> str:
    """A regex for the opening of a bare call, up to its name: of ``name``, or of any callable tool."""
    names = re.escape(name) if name else "|".join(re.escape(t.name) for t in plan.callable)
    return f'\\{{{_WS}"name"{_WS}:{_WS}"({names})"'


def _bare_calls(plan: ToolPlan) -> list[str]:
    """Rules for ``bare``: one call or more, each ``{"name": ..., "arguments": {...}}``, the first one
    perhaps after white space or a fence. llguidance's lexer decides between lexemes that start
    together only where one of them ends, so each opening, up to the tool's name, is one lexeme
    beside TEXT (which excludes exactly these openings), never the JSON's own ``{``."""
    rules = [
        f'ARGS: /{_WS},{_WS}"(arguments|parameters)"{_WS}:{_WS}/',
        f"END: /{_WS}\\}}/",
        f"SEP: /[ \\t\\r\\n]+|{_WS},{_WS}/",
        f"FENCE_END: /{_WS}```/",
        "WS: /[ \\t\\r\\n]+/",
    ]
    first, then = [], []
    for i, tool in enumerate(plan.callable):
        rules.append(f"FIRST{i}: /({_LEAD})?{_opening(plan, tool.name)}/")
        rules.append(f"NEXT{i}: /{_opening(plan, tool.name)}/")
        rules.append(f"args{i}: {_lark_json({**tool.parameters, 'x-guidance': FREE_LAYOUT})}")
        first.append(f"FIRST{i} ARGS args{i} END")
        then.append(f"NEXT{i} ARGS args{i} END")
    rules += [f"first: {' | '.join(first)}", f"next: {' | '.join(then)}"]
    more = "" if plan.max_calls == 1 else " (SEP next)*"
    return [*rules, f"bare: first{more} FENCE_END? WS?"]


def _mistral(plan: ToolPlan, markers: ModelTools) -> Constraint:
    """The array of calls follows the [TOOL_CALLS] marker."""
    array = f"array: {_lark_json({**_calls_array(plan, 'arguments'), 'x-guidance': COMPACT})}"
    trigger = markers.marker("[TOOL_CALLS]")
    calls = f'calls: {trigger} " "? array'
    if plan.required:
        return _lark("start: calls", calls, array)
    if "[TOOL_CALLS]" in markers.special:  # text can never produce the token: no laziness needed
        return _lark("start: TEXT | calls", "TEXT: /(.|\\n)+/", calls, array)
    head = 'head[lazy]: TEXT "[TOOL_CALLS]"'
    return _lark('start: TEXT | head " "? array', "TEXT: /(.|\\n)*/", head, array)
