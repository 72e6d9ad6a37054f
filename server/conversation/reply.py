"""The answer as neutral events: generated text in; text, reasoning and tool-call events out; and why
it ended.

Each protocol feeds the engine's token texts to a :class:`Reply` and writes the events it gets back
in its own shape. Without tools or a thought nothing needs parsing, so protocols may skip it on their
hot path (``reply.parsing`` is False) and send the token's text as it is.

A thought (the engine marks its tokens) never reaches the tool-call parser: a ``<tool_call>`` the
model only considers while thinking is reasoning text.
"""

from __future__ import annotations

from engine import FinishReason
from server.conversation.parser import ToolCallParser
from server.conversation.thinking import ThoughtText, clean_thought
from server.conversation.tool_formats import ToolPlan
from server.conversation.types import CallEnd, Delta, Reasoning, StopReason, Text


class ToolCallOut:
    """A whole call of a whole answer."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self, ident: str, name: str, arguments: str) -> None:
        self.id, self.name, self.arguments = ident, name, arguments


class Reply:
    __slots__ = ("_answer_begun", "_parser", "_thought", "thinking")

    def __init__(self, tools: ToolPlan | None, thinking: bool = False) -> None:
        self._parser = None
        if tools is not None:
            names = frozenset(t.name for t in tools.callable)
            self._parser = ToolCallParser(tools.format, names, tools.max_calls)
        self.thinking = thinking  # the engine keeps a thought apart (its tokens are marked)
        self._thought: ThoughtText | None = None  # the thought being streamed, once it began
        self._answer_begun = False

    @property
    def parsing(self) -> bool:
        return self._parser is not None or self.thinking

    def think(self, text: str) -> list[Delta]:
        """Text of the thought."""
        if self._thought is None:
            self._thought = ThoughtText()
        shown = self._thought.push(text)
        return [Reasoning(shown)] if shown else []

    @property
    def called(self) -> bool:
        return self._parser is not None and self._parser.called

    def push(self, text: str, reasoning: bool = False) -> list[Delta]:
        """Text of the answer, or (``reasoning``) of the thought."""
        if reasoning:
            return self.think(text)
        if not self._answer_begun and self._thought is not None:  # the blank lines after a thought
            text = text.lstrip()
        if not text:
            return []
        self._answer_begun = True
        if self._parser is None:
            return [Text(text)]
        return self._parser.push(text)

    def finish(self) -> list[Delta]:
        return [] if self._parser is None else self._parser.finish()

    def stop_reason(self, reason: FinishReason) -> StopReason:
        """A call cut by the token budget is not a finished call: that answer ended by length."""
        if reason is FinishReason.LENGTH:
            return "length"
        if self.called:
            return "tool_calls"
        return "stop_sequence" if reason is FinishReason.STOP_SEQUENCE else "end_turn"


def whole(reply: Reply, text: str, reasoning: str = "") -> tuple[str, list[ToolCallOut]]:
    """A whole answer's text and calls (``reasoning``: the thought before it, which only says where
    the answer begins)."""
    if reasoning:
        reply.think(reasoning)
    deltas = reply.push(text) + reply.finish()
    content = "".join(d.text for d in deltas if isinstance(d, Text))
    calls = [ToolCallOut(d.id, d.name, d.arguments) for d in deltas if isinstance(d, CallEnd)]
    return content, calls


def thought(text: str) -> str | None:
    """A whole thought as protocols show it; None when there was none."""
    return clean_thought(text) if text else None
