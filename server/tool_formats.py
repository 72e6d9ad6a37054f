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

# Separators as the templates render JSON, and no free whitespace (see the module docstring).
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ToolFormat(enum.Enum):
    GENERIC = "generic"
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"


class Tool(msgspec.Struct, frozen=True):
    name: str
    description: str | None
    parameters: dict[str, Any]


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


# -- grammars --------------------------------------------------------------------------------------


def _lark_json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(schema, ensure_ascii=False)


SpecialToken = Callable[[str], int | None]


def constraint(plan: ToolPlan, special_token: SpecialToken) -> Constraint:
    """The grammar for ``plan``. ``special_token(text)`` is the id of ``text`` when the model's
    vocabulary holds it as one special token (Mistral's ``[TOOL_CALLS]``), else None."""
    if plan.format is ToolFormat.GENERIC:
        return Constraint("json_schema", json.dumps(generic_schema(plan), ensure_ascii=False), "tools")
    if plan.format is ToolFormat.LLAMA3:
        call = _lark_json(_one_of_calls(plan, "parameters"))
        # A plain answer may not start with "{": that is where a call starts (llguidance's own
        # Llama 3.1 example).
        start = "start: call" if plan.required else "start: TEXT | call\nTEXT: /[^{](.|\\n)*/"
        return Constraint("lark", f"{start}\ncall: {call}\n", "tools")
    if plan.format is ToolFormat.HERMES:
        call = _lark_json(_one_of_calls(plan, "arguments"))
        more = "" if plan.max_calls == 1 else '("\\n" "<tool_call>" body)*'
        if plan.required:
            start = f'start: "<tool_call>" body {more}'
        else:
            # Lazy: any text until the first "<tool_call>", then only calls (llguidance's tool-calling
            # pattern); the answer ends with the last call.
            start = f'start: TEXT | head body {more}\nTEXT: /(.|\\n)*/\nhead[lazy]: TEXT "<tool_call>"'
        body = 'body: "\\n" call "\\n</tool_call>"'
        return Constraint("lark", f"{start}\n{body}\ncall: {call}\n", "tools")
    # Mistral: the array of calls follows the [TOOL_CALLS] token.
    array = {**_calls_array(plan, "arguments"), "x-guidance": COMPACT}
    token = special_token("[TOOL_CALLS]")
    trigger = f"<[{token}]>" if token is not None else '"[TOOL_CALLS]"'
    if plan.required:
        start = "start: calls"
    elif token is not None:  # a special token: text can never produce it, so no laziness is needed
        start = "start: TEXT | calls\nTEXT: /(.|\\n)+/"
    else:
        start = 'start: TEXT | head " "? array\nTEXT: /(.|\\n)*/\nhead[lazy]: TEXT "[TOOL_CALLS]"'
        return Constraint("lark", f"{start}\narray: {_lark_json(array)}\n", "tools")
    return Constraint("lark", f'{start}\ncalls: {trigger} " "? array\narray: {_lark_json(array)}\n', "tools")
