"""One sequence's way through a thought: before it, inside it, then the answer.

A thinking model writes ``<think> … </think>`` and then its answer; some templates open the thought in
the prompt, so the output starts inside it. The markers are tokens of their own (the server only asks
for this when they are), so following the thought costs one comparison per token and never looks at
text. What the thought changes on the scheduler's path is decided here:

- its tokens are marked (``TokenEvent.reasoning``) and its markers show as nothing;
- a constraint on the output (a schema, a tool grammar) starts where the answer starts: the thought
  itself is free text, and a ``<tool_call>`` written inside it is text;
- the budget: once the thought has that many tokens, the next one is the end marker, written by the
  engine as if the model had; and when the answer must match a grammar, the model's end of turn inside
  the thought closes the thought instead, so that the answer still comes.
"""

from __future__ import annotations

import enum

from engine.types import Thinking


class Phase(enum.Enum):
    BEFORE = 0  # nothing generated yet: the first token may open the thought
    INSIDE = 1
    ANSWER = 2


# What a token is, for the stream (Thought.advance)
ANSWER = 0  # answer text
THOUGHT = 1  # text of the thought
MARKER = 2  # the marker that opens or closes the thought: part of it, shown as nothing


class Thought:
    __slots__ = ("budget", "end", "phase", "spent", "start", "tokens")

    def __init__(self, spec: Thinking) -> None:
        self.start, self.end = spec.start, spec.end
        self.budget = spec.budget
        self.phase = Phase.INSIDE if spec.opened else Phase.BEFORE
        self.spent = 0  # tokens written inside the thought (what the budget counts)
        self.tokens = 0  # generated tokens that belong to the thought, its markers included

    @property
    def answering(self) -> bool:
        return self.phase is Phase.ANSWER

    def forced(self) -> int:
        """The end marker when the budget is spent (the engine writes it instead of sampling), else -1."""
        if self.phase is Phase.INSIDE and self.budget is not None and self.spent >= self.budget:
            return self.end
        return -1

    def guided(self, token: int) -> bool:
        """Whether the constraint must judge ``token``: only answer tokens are the grammar's."""
        if self.phase is Phase.ANSWER:
            return True
        return self.phase is Phase.BEFORE and token != self.start

    def instead_of_end_of_turn(self, constrained: bool) -> int:
        """The token to write where the model ends its turn: inside the thought of a constrained
        request, the end marker (the answer the grammar asks for is still to come); else -1."""
        return self.end if constrained and self.phase is Phase.INSIDE else -1

    def advance(self, token: int) -> int:
        """Move past ``token``; says what it is: ANSWER, THOUGHT or MARKER."""
        phase = self.phase
        if phase is Phase.INSIDE:
            self.tokens += 1
            if token == self.end:
                self.phase = Phase.ANSWER
                return MARKER
            self.spent += 1
            return THOUGHT
        if phase is Phase.BEFORE:
            if token == self.start:
                self.tokens += 1
                self.phase = Phase.INSIDE
                return MARKER
            self.phase = Phase.ANSWER
        return ANSWER
