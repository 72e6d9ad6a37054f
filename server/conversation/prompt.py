"""What every chat protocol does between its conversation and the engine: render the planned messages
with the model's chat template, tokenize them, and resolve the token budget and stop strings, each
refusal naming the protocol's own field. Shared so that chat completions, Responses and Messages
refuse the same requests with the same words."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

from engine import ValidationError, refuse_surely_too_long, resolve_max_tokens
from engine.types import Thinking
from server.conversation.plan import ChatPlan
from server.conversation.thinking import engine_thinking
from server.state import Limits, Services

Tokenize = Callable[[str], list[int]]


def tokens(text: str, tokenize: Tokenize, limits: Limits, field: str) -> list[int]:
    """The tokens of a rendered chat prompt, unless it is surely too long to be worth tokenizing."""
    refuse_surely_too_long(text, limits.max_input_tokens, limits.longest_piece, field)
    return tokenize(text)


def render(s: Services, plan: ChatPlan, field: str) -> list[int]:
    text = s.engine.chat_template.render(plan.messages, tools=plan.template_tools, extra=plan.template_args)
    return tokens(text, lambda t: s.engine.tokenize(t, add_special=False), s.limits, field)


async def prompt(s: Services, plan: ChatPlan, field: str) -> list[int]:
    """The prompt's tokens. Rendering and tokenizing a long prompt takes a while (~0.4 s for 2 MB):
    off the event loop, so that running streams go on meanwhile."""
    return await asyncio.to_thread(render, s, plan, field)


def thinking(s: Services, plan: ChatPlan, prompt: list[int]) -> Thinking | None:
    """How the engine is to keep this request's thought apart (None: there is none to keep)."""
    return engine_thinking(s.thinking, plan.thinking, prompt, s.engine.model.blank)


def budget(n_prompt: int, requested: int | None, limits: Limits, prompt_field: str, field: str) -> int:
    """Tokens to generate at most; refuses a prompt or a budget that does not fit."""
    return resolve_max_tokens(
        n_prompt,
        requested,
        max_input=limits.max_input_tokens,
        max_total=limits.max_total_tokens,
        prompt_field=prompt_field,
        max_field=field,
    )


def stop_strings(stop: str | Sequence[str] | None, limits: Limits, field: str = "stop") -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    stops = tuple(s for s in stops if s)
    if len(stops) > limits.max_stop_sequences:
        raise ValidationError(
            f"`{field}` holds {len(stops)} sequences; at most {limits.max_stop_sequences} are allowed", field
        )
    return stops


def seed(requested: int | None) -> int:
    """The request's seed, or a fresh one: unseeded requests must not all sample alike."""
    return requested if requested is not None else uuid.uuid4().int & 0xFFFFFFFF


LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range: -100 (in effect a ban) .. 100 (in effect the only choice)


def logit_bias(bias: dict[str, float] | None, n_vocab: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias`` (token ids as strings; chat completions, and Responses as an extension)
    as (id, bias) pairs, checked: llama.cpp's sampler would read past the logits for an id outside the
    vocabulary. Values are added to the logits as given, as llama-server and vLLM do."""
    pairs = []
    for key, value in (bias or {}).items():
        if not (key.isascii() and key.isdigit()):
            raise ValidationError(f"`logit_bias` keys must be token ids; {key!r} is not one", "logit_bias")
        token = int(key)
        if token >= n_vocab:
            raise ValidationError(
                f"`logit_bias` names token {token}, but this model's token ids run from 0 to {n_vocab - 1}",
                "logit_bias",
            )
        if not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:  # NaN fails too
            raise ValidationError(
                f"`logit_bias` values must lie within -100..100; token {token} has {value}", "logit_bias"
            )
        pairs.append((token, value))
    return tuple(sorted(pairs))
