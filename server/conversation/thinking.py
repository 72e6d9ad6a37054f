"""Thinking models: which markers the model writes its thought between (found once, at start-up, from
the chat template and the vocabulary), and how each request's prompt leaves the thought.

The engine follows the thought by token id (engine/thinking.py), so markers count only when the
vocabulary holds each as a token of its own, as Qwen3, QwQ, DeepSeek-R1 distills and SmolLM3 do. A
template that opens the thought in the prompt (DeepSeek-R1 distills end it with ``<think>\\n``) is
seen in the rendered prompt itself, request by request, as is one that closes it there (Qwen3 with
``enable_thinking: false`` renders an empty ``<think>\\n\\n</think>``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

import msgspec

from engine import ValidationError
from engine.types import Thinking
from server.conversation.types import UNLIMITED, ThinkingChoice

# (opening, closing) markers of the thought, as templates spell them
MARKERS = (("<think>", "</think>"), ("<seed:think>", "</seed:think>"))

# Budgets of ``reasoning_effort`` (chat) and ``reasoning.effort`` (Responses), in tokens of thought;
# UNLIMITED: no limit beyond max_tokens. "none" switches thinking off.
EFFORT_BUDGETS: dict[str, int] = {
    "minimal": 256,
    "low": 1024,
    "medium": 4096,
    "high": UNLIMITED,
    "xhigh": UNLIMITED,  # newer OpenAI efforts: no more than "high" can give here
    "max": UNLIMITED,
}


class ModelThinking(msgspec.Struct, frozen=True):
    start: int  # token ids of the markers
    end: int
    start_text: str
    end_text: str
    switch: bool  # the template reads ``enable_thinking`` (it can turn the thought off)
    default_budget: int | None  # --reasoning-budget; None: no limit

    def describe(self) -> str:
        switch = ", switched by enable_thinking" if self.switch else ""
        budget = "none" if self.default_budget is None else f"{self.default_budget} tokens"
        return (
            f"{self.start_text}…{self.end_text} (tokens {self.start}/{self.end}){switch}; "
            f"default budget: {budget}"
        )


def find_thinking(
    template: str, special_token: Callable[[str], int | None], default_budget: int | None
) -> tuple[ModelThinking | None, str]:
    """The model's thought markers, and the start-up log line saying what was found."""
    for start, end in MARKERS:
        if start not in template and end not in template:
            continue
        ids = special_token(start), special_token(end)
        if ids[0] is None or ids[1] is None:
            return (
                None,
                f"the template writes {start}…{end}, but they are not tokens: the thought stays in the text",
            )
        found = ModelThinking(ids[0], ids[1], start, end, "enable_thinking" in template, default_budget)
        return found, found.describe()
    return None, "none (the template writes no thought markers)"


class PromptEnd(enum.Enum):
    OPEN = "open"  # the prompt ends inside the thought
    CLOSED = "closed"  # the prompt holds the (empty) thought already: the output is the answer
    FREE = "free"  # the model may open a thought with its first token


def prompt_end(prompt: Sequence[int], model: ModelThinking, blank: Callable[[int], bool]) -> PromptEnd:
    """Where the prompt leaves the thought: its last token that is not whitespace decides."""
    for token in reversed(prompt):
        if token == model.start:
            return PromptEnd.OPEN
        if token == model.end:
            return PromptEnd.CLOSED
        if not blank(token):
            return PromptEnd.FREE
    return PromptEnd.FREE


def template_args(
    model: ModelThinking | None, choice: ThinkingChoice, given: dict[str, object]
) -> dict[str, object]:
    """The client's template variables, and ``enable_thinking`` where the template reads it."""
    if model is None or not model.switch:
        return given
    return {**given, "enable_thinking": choice.enabled}


def engine_thinking(
    model: ModelThinking | None, choice: ThinkingChoice, prompt: Sequence[int], blank: Callable[[int], bool]
) -> Thinking | None:
    """The engine's instructions for this request, or None when no thought can come: the model does
    not think, or the prompt has closed the thought already. Thinking switched off on a template that
    cannot switch it is a budget of 0: the thought is closed at once."""
    if model is None:
        return None
    end = prompt_end(prompt, model, blank)
    if end is PromptEnd.CLOSED:
        return None
    budget = (choice.budget if choice.budget is not None else model.default_budget) if choice.enabled else 0
    if budget == UNLIMITED:
        budget = None
    return Thinking(model.start, model.end, opened=end is PromptEnd.OPEN, budget=budget)


def effort_budget(effort: str | None, field: str) -> ThinkingChoice | None:
    """``reasoning_effort`` as a choice; None when not given (the server's default applies)."""
    if effort is None:
        return None
    if effort == "none":
        return ThinkingChoice(enabled=False)
    if effort not in EFFORT_BUDGETS:
        raise ValidationError(
            f"`{field}` must be one of 'none', {', '.join(repr(e) for e in EFFORT_BUDGETS)}; got {effort!r}",
            field,
        )
    return ThinkingChoice(budget=EFFORT_BUDGETS[effort])


def clean_thought(text: str) -> str:
    """A whole thought as it is shown: without the blank lines the model writes inside its markers."""
    return text.strip()


class ThoughtText:
    """A streamed thought, shown as :func:`clean_thought` shows the whole one: its leading whitespace
    dropped, and whitespace held back until text follows it (what ends the thought is dropped)."""

    __slots__ = ("_pending", "_started")

    def __init__(self) -> None:
        self._started = False
        self._pending = ""

    def push(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        text = self._pending + text
        shown = text.rstrip()
        self._pending = text[len(shown) :]
        return shown
