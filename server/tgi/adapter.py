"""Pure translations between TGI's wire format and the engine, with TGI's validation rules and messages."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from engine import (
    Completion,
    Constraint,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    ValidationError,
    refuse_surely_too_long,
    resolve_max_tokens,
)
from server.conversation.prompt import Tokenize
from server.conversation.tool_formats import COMPACT
from server.errors import Problem, tgi_body
from server.sse import frame
from server.state import Limits
from server.tgi import wire as w

TokenizeTail = Callable[[str, int], list[int]]  # (text, n): the last n tokens of the text

MAX_TOP_N_TOKENS = 5


def _invalid(message: str, field: str) -> ValidationError:
    return ValidationError(f"Input validation error: {message}", field)


def validate(p: w.GenerateParameters, limits: Limits) -> None:
    """TGI's parameter rules, in TGI's words."""
    if p.best_of is not None and p.best_of != 1:
        raise _invalid(f"`best_of` must be > 0 and <= 1. Given: {p.best_of}", "best_of")
    if p.temperature is not None and p.temperature <= 0:
        raise _invalid("`temperature` must be strictly positive", "temperature")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        raise _invalid("`repetition_penalty` must be strictly positive", "repetition_penalty")
    if p.frequency_penalty is not None and not -2.0 <= p.frequency_penalty <= 2.0:
        raise _invalid("`frequency_penalty` must be >= -2.0 and <= 2.0", "frequency_penalty")
    if p.top_p is not None and not 0.0 < p.top_p < 1.0:
        raise _invalid("`top_p` must be > 0.0 and < 1.0", "top_p")
    if p.typical_p is not None and not 0.0 < p.typical_p < 1.0:
        raise _invalid("`typical_p` must be > 0.0 and < 1.0", "typical_p")
    if p.top_k is not None and p.top_k <= 0:
        raise _invalid("`top_k` must be strictly positive", "top_k")
    if p.max_new_tokens is not None and p.max_new_tokens <= 0:
        raise _invalid("`max_new_tokens` must be strictly positive", "max_new_tokens")
    if len(p.stop) > limits.max_stop_sequences:
        raise _invalid(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(p.stop)}", "stop"
        )
    if p.top_n_tokens is not None and not 0 <= p.top_n_tokens <= MAX_TOP_N_TOKENS:
        raise _invalid(
            f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {p.top_n_tokens}", "top_n_tokens"
        )
    if p.truncate is not None and not 0 < p.truncate <= limits.max_input_tokens:
        message = f"`truncate` must be strictly positive and less than {limits.max_input_tokens}"
        raise _invalid(f"{message}. Given: {p.truncate}", "truncate")
    if p.decoder_input_details:
        # The prompt's logprobs need logits for every prompt row; the scheduler computes them only
        # for the last one. An empty `prefill` would look like an answer, so refuse instead.
        raise _invalid("`decoder_input_details` is not supported by this server", "decoder_input_details")


def grammar(g: w.Grammar | None) -> Constraint | None:
    """TGI's ``grammar`` as an engine constraint; the engine refuses (naming ``grammar``) what
    llguidance cannot enforce."""
    if g is None:
        return None
    value = g.value
    if g.type in ("json", "json_object"):  # TGI accepts the schema as an object or as its JSON text
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise _invalid(f"`grammar.value` is not JSON: {exc}", "grammar") from exc
        if not isinstance(value, dict):
            raise _invalid("`grammar.value` must be a JSON schema (an object)", "grammar")
        return Constraint("json_schema", json.dumps({"x-guidance": COMPACT, **value}), "grammar")
    if g.type == "json_schema":  # {"name"?, "schema"} as TGI 3 sends it
        schema = value.get("schema") if isinstance(value, dict) else None
        if not isinstance(schema, dict):
            raise _invalid("`grammar.value.schema` must be a JSON schema (an object)", "grammar")
        return Constraint("json_schema", json.dumps({"x-guidance": COMPACT, **schema}), "grammar")
    if g.type == "regex":
        if not isinstance(value, str) or not value:
            raise _invalid("`grammar.value` must be a regular expression (a string)", "grammar")
        return Constraint("regex", value, "grammar")
    raise _invalid(f"`grammar.type` must be 'json', 'regex' or 'json_schema'. Given: {g.type!r}", "grammar")


def sampling(p: w.GenerateParameters, seed: int) -> SamplingParams:
    # As TGI: any warper (temperature, top_k, top_p, typical_p) turns sampling on, even without do_sample.
    warped = (
        (p.temperature not in (None, 1.0)) or bool(p.top_k) or p.top_p is not None or p.typical_p is not None
    )
    temperature = (p.temperature or 1.0) if (p.do_sample or warped) else 0.0
    return SamplingParams(
        temperature=temperature,
        top_k=p.top_k or 0,
        top_p=p.top_p if p.top_p is not None else 1.0,
        typical_p=p.typical_p if p.typical_p is not None else 1.0,
        repetition_penalty=p.repetition_penalty if p.repetition_penalty is not None else 1.0,
        frequency_penalty=p.frequency_penalty or 0.0,
        seed=seed,
    )


def generation_request(
    body: w.GenerateRequest, tokenize: Tokenize, tokenize_tail: TokenizeTail, limits: Limits
) -> GenerationRequest:
    p = body.parameters
    validate(p, limits)
    if not body.inputs:
        raise _invalid("`inputs` cannot be empty", "inputs")
    if p.truncate is None:
        refuse_surely_too_long(body.inputs, limits.max_input_tokens, limits.longest_piece, "inputs")
        tokens = tokenize(body.inputs)
    else:  # a long input is cut to its last tokens (as TGI does), not refused
        tokens = tokenize_tail(body.inputs, p.truncate)
    if len(tokens) > limits.max_input_tokens:
        raise _invalid(
            f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {len(tokens)}", "inputs"
        )
    if p.max_new_tokens is not None and len(tokens) + p.max_new_tokens > limits.max_total_tokens:
        raise _invalid(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. Given: {len(tokens)} "
            f"`inputs` tokens and {p.max_new_tokens} `max_new_tokens`",
            "max_new_tokens",
        )
    max_new = resolve_max_tokens(
        len(tokens),
        p.max_new_tokens,
        max_input=limits.max_input_tokens,
        max_total=limits.max_total_tokens,
        prompt_field="inputs",
        max_field="max_new_tokens",
    )
    seed = p.seed if p.seed is not None else uuid.uuid4().int & 0xFFFFFFFF
    top_n = p.top_n_tokens or 0
    return GenerationRequest(
        prompt_tokens=tuple(tokens),
        max_tokens=max_new,
        sampling=sampling(p, seed),
        stop=tuple(s for s in p.stop if s),
        logprobs=True,  # TGI always reports each token's logprob
        top_logprobs=top_n,
        constraint=grammar(p.grammar),
    )


def _token(event: TokenEvent) -> w.Token:
    return w.Token(event.token_id, event.text, event.logprob, event.special)


def _top_tokens(event: TokenEvent) -> list[w.Token]:
    return [w.Token(t.token_id, t.text, t.logprob, False) for t in event.top_logprobs or ()]


def _seed(request: GenerationRequest) -> int | None:
    return None if request.sampling.greedy else request.sampling.seed


def generate_response(
    request: GenerationRequest, inputs: str, result: Completion, p: w.GenerateParameters
) -> w.GenerateResponse:
    text = inputs + result.text if p.return_full_text else result.text
    if not p.details:
        return w.GenerateResponse(text)
    top = [_top_tokens(t) for t in result.tokens] if request.top_logprobs else None
    details = w.Details(
        finish_reason=result.finish.reason.value,
        generated_tokens=result.finish.usage.completion_tokens,
        seed=_seed(request),
        prefill=[],
        tokens=[_token(t) for t in result.tokens],
        top_tokens=top,
    )
    return w.GenerateResponse(text, details)


class TgiStream:
    """Turns engine events into TGI ``StreamResponse`` SSE frames: one per token, the last one with
    ``generated_text`` (and ``details`` when asked for)."""

    __slots__ = ("_details", "_index", "_prefix", "_request", "_texts", "_top")

    def __init__(self, request: GenerationRequest, inputs: str, p: w.GenerateParameters) -> None:
        self._request = request
        self._details = p.details
        self._prefix = inputs if p.return_full_text else ""
        self._top = bool(request.top_logprobs)
        self._texts: list[str] = []
        self._index = 0

    def token(self, event: TokenEvent) -> bytes:
        self._texts.append(event.text)
        self._index += 1
        top = _top_tokens(event) if self._top else None
        return frame(w.StreamResponse(self._index, _token(event), None, None, top))

    def finish(self, event: FinishEvent) -> bytes:
        last = event.token
        self._texts.append(last.text)
        details = None
        if self._details:
            details = w.StreamDetails(
                event.reason.value,
                event.usage.completion_tokens,
                _seed(self._request),
                event.usage.prompt_tokens,
            )
        text = self._prefix + "".join(self._texts)
        top = _top_tokens(last) if self._top else None
        return frame(w.StreamResponse(self._index + 1, _token(last), text, details, top))

    def error(self, problem: Problem) -> bytes:
        return frame(tgi_body(problem))


def tokenize_response(pieces: list[tuple[int, str, int, int]]) -> list[w.SimpleToken]:
    return [w.SimpleToken(i, text, start, stop) for i, text, start, stop in pieces]
