"""The answer as neutral events: generated text in, text and tool-call events out, and why it ended.

Each protocol feeds the engine's token texts to a :class:`Reply` and writes the events it gets back
in its own shape. Without tools nothing needs parsing, so protocols may skip it on their hot path
(``reply.parsing`` is False) and send the token's text as it is.
"""

from __future__ import annotations

from engine import FinishReason
from server.conversation.parser import ToolCallParser
from server.conversation.tool_formats import ToolPlan
from server.conversation.types import CallEnd, Delta, StopReason, Text


class ToolCallOut:
    """A whole call of a whole answer."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self, ident: str, name: str, arguments: str) -> None:
        self.id, self.name, self.arguments = ident, name, arguments


class Reply:
    __slots__ = ("_parser",)

    def __init__(self, tools: ToolPlan | None) -> None:
        self._parser = None
        if tools is not None:
            names = frozenset(t.name for t in tools.callable)
            self._parser = ToolCallParser(tools.format, names, tools.max_calls)

    @property
    def parsing(self) -> bool:
        return self._parser is not None

    @property
    def called(self) -> bool:
        return self._parser is not None and self._parser.called

    def push(self, text: str) -> list[Delta]:
        if self._parser is None:
            return [Text(text)] if text else []
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


def whole(reply: Reply, text: str) -> tuple[str, list[ToolCallOut]]:
    """A whole answer's text and calls."""
    deltas = reply.push(text) + reply.finish()
    content = "".join(d.text for d in deltas if isinstance(d, Text))
    calls = [ToolCallOut(d.id, d.name, d.arguments) for d in deltas if isinstance(d, CallEnd)]
    return content, calls
