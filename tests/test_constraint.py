"""Constrained decoding in the engine, in-process on the real model: whatever the model would rather
write, the output matches the grammar; what cannot be enforced is refused up front."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from enum import StrEnum

import pydantic
import pytest

from engine import (
    Completion,
    Constraint,
    Engine,
    EngineConfig,
    FinishReason,
    GenerationRequest,
    SamplingParams,
)
from engine.errors import ValidationError


class Colour(StrEnum):
    red = "red"
    green = "green"


class Address(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")  # as OpenAI's strict schemas are
    city: str = pydantic.Field(max_length=40)
    postcode: str = pydantic.Field(pattern=r"^[0-9]{5}$")


class Person(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=40)
    age: int = pydantic.Field(ge=18, le=99)
    favourite: Colour
    address: Address
    tags: list[str] = pydantic.Field(max_length=3)


SCHEMA = Constraint("json_schema", json.dumps(Person.model_json_schema()), field="response_format")


def with_engine(model_path: str, scenario: Callable[[Engine], Awaitable[None]]) -> None:
    async def run() -> None:
        engine = Engine(EngineConfig(model_path=model_path, n_threads=2))
        engine.start()
        try:
            await scenario(engine)
        finally:
            engine.close()

    asyncio.run(run())


def request(
    engine: Engine, prompt: str, constraint: Constraint | None, **fields: object
) -> GenerationRequest:
    tokens = tuple(engine.tokenize(prompt))
    return GenerationRequest(tokens, constraint=constraint, **fields)  # type: ignore[arg-type]


def test_json_schema_output_validates_greedy_and_sampled(model_path: str) -> None:
    prompt = "Write a short poem about the sea.\n"  # the model would write prose here

    async def scenario(engine: Engine) -> None:
        settings = [SamplingParams(temperature=0.0)] + [
            SamplingParams(temperature=1.0, seed=seed) for seed in range(2)
        ]
        settings.append(SamplingParams(temperature=0.8, seed=9, repetition_penalty=1.3))  # mask-first path
        results = await asyncio.gather(
            *(
                engine.submit(request(engine, prompt, SCHEMA, max_tokens=300, sampling=s)).collect()
                for s in settings
            )
        )
        for result in results:
            assert result.finish.reason is FinishReason.EOS, result.text
            Person.model_validate_json(result.text)  # raises if the output does not validate

    with_engine(model_path, scenario)


def test_regex_output_matches_whole(model_path: str) -> None:
    pattern = r"(yes|no), [0-9]{3}-[A-Z]{2}!"

    async def scenario(engine: Engine) -> None:
        constraint = Constraint("regex", pattern)
        samplings = [SamplingParams(temperature=1.2, seed=seed) for seed in range(3)]
        results = await asyncio.gather(
            *(
                engine.submit(
                    request(engine, "Tell me a story.", constraint, max_tokens=30, sampling=s)
                ).collect()
                for s in samplings
            )
        )
        for result in results:
            assert re.fullmatch(pattern, result.text), result.text

    with_engine(model_path, scenario)


def test_a_lazy_lark_grammar_leaves_text_free_until_its_trigger(model_path: str) -> None:
    """Free text, then once ``<call>`` appears, a JSON object and ``</call>``: the tool-call shape. Text
    that never reaches the trigger is exactly what the model writes unconstrained."""
    grammar = (
        "start: TEXT | call\n"
        "TEXT: /(.|\\n)*/\n"
        'call_head[lazy]: TEXT "<call>"\n'
        'call: call_head %json {"type": "object", "properties": {"n": {"type": "integer"}}, '
        '"required": ["n"], "additionalProperties": false} "</call>"\n'
    )
    lazy = Constraint("lark", grammar)

    async def scenario(engine: Engine) -> None:
        prompt = "The capital of France is"
        free, constrained = await asyncio.gather(
            engine.submit(
                request(engine, prompt, None, max_tokens=40, sampling=SamplingParams(0.0))
            ).collect(),
            engine.submit(
                request(engine, prompt, lazy, max_tokens=40, sampling=SamplingParams(0.0))
            ).collect(),
        )
        assert "<call>" not in free.text
        assert constrained.text == free.text
        prompt = (
            'Copy this line: <call>{"n": 5}</call>\nCopy this line: <call>{"n": 5}</call>\nCopy this line:'
        )
        result = await engine.submit(request(engine, prompt, lazy, max_tokens=30)).collect()
        _, found, tail = result.text.partition("<call>")
        assert found, result.text
        assert re.fullmatch(r'\{"n": ?-?[0-9]+\}</call>', tail), result.text

    with_engine(model_path, scenario)


def test_max_tokens_inside_the_structure_ends_with_length(model_path: str) -> None:
    async def scenario(engine: Engine) -> None:
        result: Completion = await engine.submit(request(engine, "Hi", SCHEMA, max_tokens=5)).collect()
        assert result.finish.reason is FinishReason.LENGTH and len(result.tokens) == 5
        assert result.text.startswith("{")

    with_engine(model_path, scenario)


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (Constraint("json_schema", '{"type": "array", "uniqueItems": true}', "schema"), "uniqueItems"),
        (Constraint("json_schema", '{"type": "string", "format": "nonsense"}', "schema"), "nonsense"),
        (Constraint("json_schema", "{not json", "schema"), "schema"),
        (Constraint("regex", "[0-9", "grammar"), "regex"),
        (Constraint("lark", "start: undefined_rule", "grammar"), "undefined_rule"),
    ],
)
def test_what_cannot_be_enforced_is_refused_naming_the_field(
    model_path: str, constraint: Constraint, message: str
) -> None:
    async def scenario(engine: Engine) -> None:
        with pytest.raises(ValidationError, match=message) as refused:
            engine.submit(request(engine, "Hi", constraint, max_tokens=5))
        assert refused.value.field == constraint.field
        assert engine.stats().admitted == 0
        after = await engine.submit(request(engine, "Hi", None, max_tokens=3)).collect()
        assert len(after.tokens) == 3

    with_engine(model_path, scenario)
