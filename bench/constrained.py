"""What a JSON-schema constraint costs: decode speed with and without it over HTTP, and the grammar's own
time per token measured in-process."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np

from bench.client import parsed_stream
from engine import Constraint, Engine, EngineConfig, GenerationRequest
from engine.constraint import Guide

# Never complete within the bench's length, so both requests generate exactly max_tokens.
PEOPLE = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 500,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "colour": {"enum": ["red", "green", "blue"]},
                },
                "required": ["name", "age", "colour"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["people"],
    "additionalProperties": False,
}
PROMPT = "List the people of the village with their age and favourite colour, as JSON."


def _body(n_tokens: int, constrained: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": n_tokens,
        "temperature": 0,
    }
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "people", "schema": PEOPLE}}
    else:
        body["ignore_eos"] = True  # as long as the constrained answer
    return body


def decode_rates(base_url: str, n_tokens: int) -> tuple[float, float]:
    """(constrained, unconstrained) tokens/s of one stream each, measured back to back."""
    rates = []
    for constrained in (True, False):
        result = asyncio.run(parsed_stream(base_url, "/v1/chat/completions", _body(n_tokens, constrained)))
        assert result.tokens == n_tokens, result
        rates.append((result.tokens - 1) / (result.last - result.first))
    return rates[0], rates[1]


def mask_cost(model: str, threads: int, n_tokens: int) -> tuple[float, float, int]:
    """Replays a constrained greedy answer through a fresh matcher: mean µs to compute and apply the
    full mask, mean µs to check a sampled token against the grammar, and the tokens replayed."""

    async def generate(engine: Engine) -> list[int]:
        engine.start()
        prompt = tuple(engine.tokenize(PROMPT))
        constraint = Constraint("json_schema", json.dumps(PEOPLE))
        result = await engine.submit(GenerationRequest(prompt, n_tokens, constraint=constraint)).collect()
        return [t.token_id for t in result.tokens]

    engine = Engine(EngineConfig(model_path=model, n_threads=threads))
    try:
        tokens = asyncio.run(generate(engine))
        matcher = engine.grammars.compile(Constraint("json_schema", json.dumps(PEOPLE)))
        guide = Guide(matcher, engine.model.n_vocab, engine.tokenize)
        logits = np.zeros(engine.model.n_vocab, dtype=np.float32)
        mask_seconds = check_seconds = 0.0
        for token in tokens:
            started = time.perf_counter()
            guide.allows(token)
            checked = time.perf_counter()
            guide.restrict(logits)
            mask_seconds += time.perf_counter() - checked
            check_seconds += checked - started
            guide.accept(token)
    finally:
        engine.close()
    return mask_seconds / len(tokens) * 1e6, check_seconds / len(tokens) * 1e6, len(tokens)
