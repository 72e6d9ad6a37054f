"""The engine's data: one frozen request per generation and the events its handle yields.

Protocol adapters in ``server/`` convert their wire models into a :class:`GenerationRequest` once,
with every default resolved, so the scheduler never has to know which API a request came from.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec


class FinishReason(enum.Enum):
    EOS = "eos_token"  # the model ended its turn
    STOP_SEQUENCE = "stop_sequence"  # a requested stop string appeared
    LENGTH = "length"  # max_tokens reached, or the context is full


class SamplingParams(msgspec.Struct, frozen=True):
    """Every knob resolved: ``temperature == 0`` means greedy, neutral values switch a stage off."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    typical_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int = 0
    # (token id, value added to its logit) pairs; -inf bans a token. Ids are checked by the protocol
    # adapter, since llama.cpp's logit-bias sampler would read out of bounds for an id past the vocab.
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalized(self) -> bool:
        """A penalty stage remembers the tokens it is shown, so it must see only the chosen ones."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


class Constraint(msgspec.Struct, frozen=True):
    """The output must match this grammar, from the first generated token on (engine/constraint.py).

    A Lark grammar (llguidance's dialect) can embed JSON schemas (``%json {...}``) and lazy rules, so
    "free text until a trigger, then a structure" needs nothing more."""

    kind: Literal["json_schema", "regex", "lark"]
    source: str  # the JSON schema as JSON text, the regex, or the Lark grammar
    field: str | None = None  # the request field it came from, named in validation errors


class Thinking(msgspec.Struct, frozen=True):
    """The model thinks between two marker tokens before it answers (engine/thinking.py).

    ``opened``: the prompt itself ends inside the thought (DeepSeek-R1 distills end it with
    ``<think>``); otherwise the model may open one with its first token. ``budget``: tokens of thought
    before the engine writes the end marker itself, as if the model had; None for no limit."""

    start: int
    end: int
    opened: bool = False
    budget: int | None = None


class GenerationRequest(msgspec.Struct, frozen=True):
    prompt_tokens: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    logprobs: bool = False  # compute each token's log-probability under the model
    top_logprobs: int = 0  # alternatives to report per token (implies logprobs)
    ignore_eos: bool = False
    constraint: Constraint | None = None
    # Render special tokens that do not end the generation (``<|python_tag|>``, ``[TOOL_CALLS]``) into
    # the text, for a protocol that parses them; by default they show as nothing.
    special_text: bool = False
    # Keep a thought apart from the answer: its tokens are marked, its markers show as nothing, the
    # constraint applies from its end on, and a budget closes it.
    thinking: Thinking | None = None


class TopLogprob(msgspec.Struct, frozen=True, gc=False):
    token_id: int
    text: str
    logprob: float


class TokenEvent(msgspec.Struct, frozen=True, gc=False):
    """One sampled token. ``text`` is what this token makes visible: it may be empty while a UTF-8
    character or a possible stop string is incomplete, or hold text of earlier tokens released now."""

    token_id: int
    text: str
    logprob: float | None = None
    special: bool = False
    top_logprobs: tuple[TopLogprob, ...] | None = None
    reasoning: bool = False  # the token belongs to the model's thought (a marker, or inside it)


class Usage(msgspec.Struct, frozen=True, gc=False):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV cells came from the prompt cache
    reasoning_tokens: int = 0  # completion tokens of the thought, its markers included

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timing(msgspec.Struct, frozen=True, gc=False):
    """Seconds from submission: until a slot was free, until the first token, until the end."""

    queued: float
    first_token: float
    total: float


class FinishEvent(msgspec.Struct, frozen=True, gc=False):
    """The last event of a successful generation. It carries the final token, so that protocols which
    mark the last token itself (TGI) need not hold every token back by one step."""

    token: TokenEvent
    reason: FinishReason
    usage: Usage
    timing: Timing
    stop_sequence: str | None = None  # the stop string that matched, when reason is STOP_SEQUENCE


class ErrorEvent(msgspec.Struct, frozen=True, gc=False):
    """The generation failed; carries the engine error the handle raises."""

    error: BaseException


Event = TokenEvent | FinishEvent | ErrorEvent


class Completion(msgspec.Struct, frozen=True):
    """A whole generation, as a non-streaming route needs it (``tokens`` includes the final one).
    ``text`` is the answer; the thought, when the request keeps it apart, is ``reasoning``."""

    text: str
    tokens: tuple[TokenEvent, ...]
    finish: FinishEvent
    reasoning: str = ""
