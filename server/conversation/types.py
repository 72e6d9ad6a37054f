"""The neutral conversation: what every chat protocol's request becomes, and the events its answer
becomes. No wire format here: each protocol translates its own shapes into these and back."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from engine.chat import ToolCall

Role = Literal["system", "user", "assistant", "tool"]


class Turn(msgspec.Struct, frozen=True):
    """One message. ``tool_calls`` belong to assistant turns; ``tool_call_id`` (and, when the
    protocol says it, ``name``) to tool results."""

    role: Role
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None  # an assistant turn's thought, as the client sent it back


class Tool(msgspec.Struct, frozen=True):
    """A function the model may call; ``parameters`` is its JSON schema."""

    name: str
    description: str | None
    parameters: dict[str, Any]


class ToolChoice(msgspec.Struct, frozen=True):
    """``none``: no calls; ``auto``: the model decides; ``required``: at least one call (of the tool
    ``name`` when set). ``parallel``: more than one call in an answer."""

    mode: Literal["none", "auto", "required"] = "auto"
    name: str | None = None
    parallel: bool = True


class OutputFormat(msgspec.Struct, frozen=True):
    """A structured answer: any JSON object, or JSON matching ``schema``."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None


class ThinkingChoice(msgspec.Struct, frozen=True):
    """Whether a thinking model may think, and at most how many tokens (None: the server's
    ``--reasoning-budget``; ``UNLIMITED``: no limit but max_tokens)."""

    enabled: bool = True
    budget: int | None = None


UNLIMITED = -1


class Fields(msgspec.Struct, frozen=True):
    """How the protocol names the request fields this layer may refuse, for its error messages."""

    turns: str = "messages"
    tools: str = "tools"
    tool_choice: str = "tool_choice"
    output: str = "response_format"
    schema: str = "response_format.json_schema.schema"


class Conversation(msgspec.Struct, frozen=True):
    turns: tuple[Turn, ...]
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    output: OutputFormat | None = None
    fields: Fields = Fields()
    thinking: ThinkingChoice = ThinkingChoice()
    # more variables for the chat template (vLLM's and llama-server's ``chat_template_kwargs``)
    template_args: dict[str, Any] = msgspec.field(default_factory=dict)


# -- what the answer becomes (see server/conversation/parser.py) -----------------------------------


class Text(msgspec.Struct, frozen=True, gc=False):
    text: str


class Reasoning(msgspec.Struct, frozen=True, gc=False):
    """Text of the model's thought, kept apart from the answer."""

    text: str


class CallStart(msgspec.Struct, frozen=True, gc=False):
    """A tool call begins: its id and name, sent once, before any of its arguments."""

    index: int
    id: str
    name: str


class CallArguments(msgspec.Struct, frozen=True, gc=False):
    """A fragment of a call's arguments (JSON text); concatenated, they are the arguments object."""

    index: int
    text: str


class CallEnd(msgspec.Struct, frozen=True, gc=False):
    """A call is complete: its whole arguments text, for protocols that repeat it at the end."""

    index: int
    id: str
    name: str
    arguments: str


Delta = Text | Reasoning | CallStart | CallArguments | CallEnd

# Why an answer ended, in neutral terms: the model ended its turn, a stop string appeared, the
# token budget ran out, or the answer is tool calls (the model ended its turn after calling).
StopReason = Literal["end_turn", "stop_sequence", "length", "tool_calls"]
