"""Tool calling and structured output over HTTP, with the clients people use: the openai SDK,
langchain-openai and huggingface_hub, against real servers: the default model (no tool support in its
template: the generic format) and copies of it given the real chat templates of Qwen2.5 (Hermes-style
calls), Llama 3.2 and Mistral 7B v0.3 with the gguf package's metadata writer (their native formats)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pydantic
import pytest
from huggingface_hub import InferenceClient, TextGenerationInputGrammarType
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall
from pydantic import SecretStr

from tests import model_variants
from tests.conftest import ServerFactory

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
NATIVE = {  # format -> a real template that speaks it
    "hermes": "qwen2.5-instruct.jinja",
    "llama3": "llama-3.2-instruct.jinja",
    "mistral": "mistral-7b-instruct-v0.3.jinja",
}
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 30}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a timezone",
            "parameters": TIME_PARAMETERS,
        },
    },
]
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris, and what time is it there?"}]
TIME_CHOICE: Any = {"type": "function", "function": {"name": "get_time"}}


def _native_server(fmt: str, model_path: str, start_server: ServerFactory) -> Iterator[str]:
    """The same weights with a real template of another family, written by the gguf package."""
    template = (TEMPLATES / NATIVE[fmt]).read_text()
    with start_server(
        "--model", str(model_variants.with_chat_template(Path(model_path), template, fmt))
    ) as url:
        yield url


@pytest.fixture(scope="session")
def hermes_url(model_path: str, start_server: ServerFactory) -> Iterator[str]:
    yield from _native_server("hermes", model_path, start_server)


@pytest.fixture(scope="session")
def llama3_url(model_path: str, start_server: ServerFactory) -> Iterator[str]:
    yield from _native_server("llama3", model_path, start_server)


@pytest.fixture(scope="session")
def mistral_url(model_path: str, start_server: ServerFactory) -> Iterator[str]:
    yield from _native_server("mistral", model_path, start_server)


@pytest.fixture(
    params=["base_url", "hermes_url", "llama3_url", "mistral_url"],
    ids=["generic", "hermes", "llama3", "mistral"],
)
def server(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(request.param)
    return url


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)


# -- response_format ---------------------------------------------------------------------------------


class Colour(StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=30)
    postcode: str = pydantic.Field(pattern=r"^[0-9]{5}$")


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    age: int = pydantic.Field(ge=18, le=99)
    favourite_colour: Colour
    address: Address
    hobbies: list[str] = pydantic.Field(max_length=3)


def test_parse_with_a_pydantic_model_gives_an_object_that_validates(server: str) -> None:
    messages: Any = [{"role": "user", "content": "Invent a person who lives in Lyon."}]
    completion = sdk(server).chat.completions.parse(
        model="any", messages=messages, response_format=Person, max_tokens=200, temperature=0
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Person)  # the SDK validated it with pydantic
    assert 18 <= message.parsed.age <= 99 and len(message.parsed.address.postcode) == 5
    assert completion.choices[0].finish_reason == "stop"


def test_json_object_and_a_json_schema_too_long_for_max_tokens(base_url: str) -> None:
    client = sdk(base_url)
    answer = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    with pytest.raises(openai.LengthFinishReasonError):  # the structure was cut: finish_reason "length"
        client.chat.completions.parse(
            model="any",
            messages=[{"role": "user", "content": "Invent a person."}],
            response_format=Person,
            max_tokens=5,
            temperature=0,
        )


# -- tool calls --------------------------------------------------------------------------------------


def reassemble(chunks: list[Any]) -> tuple[dict[int, dict[str, Any]], str, str | None]:
    """Calls rebuilt from stream deltas as an SDK does, checking OpenAI's delta shape on the way."""
    calls: dict[int, dict[str, Any]] = {}
    content, reason = "", None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        reason = choice.finish_reason or reason
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or ():
            if d.index not in calls:  # the first delta: id, type and name, arguments ""
                assert d.index == len(calls), "indices run 0..n-1"
                assert d.id and d.id.startswith("call_") and d.type == "function"
                assert d.function and d.function.name and d.function.arguments == ""
                calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": "", "fragments": 0}
            else:  # later deltas: only an arguments fragment
                assert d.id is None and d.type is None and d.function and d.function.name is None
                calls[d.index]["arguments"] += d.function.arguments or ""
                calls[d.index]["fragments"] += 1
    return calls, content, reason


def test_required_tool_calls_stream_in_openai_delta_shape(server: str) -> None:
    stream = sdk(server).chat.completions.create(
        model="any",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=150,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls, content, reason = reassemble(chunks)
    assert calls and reason == "tool_calls" and content == ""
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
        assert call["fragments"] > 1  # streamed as generated, not in one piece at the end
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    last = [c for c in chunks if c.choices][-1].choices[0]
    assert last.finish_reason == "tool_calls" and last.delta.tool_calls is None and last.delta.content is None


def test_the_sdk_accumulates_the_same_calls_the_whole_answer_has(server: str) -> None:
    client = sdk(server)
    request: dict[str, Any] = {
        "model": "any",
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 150,
        "temperature": 0,
    }
    with client.chat.completions.stream(**request) as stream:
        streamed = stream.get_final_completion().choices[0].message
    whole = client.chat.completions.create(**request).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    assert whole.message.tool_calls and streamed.tool_calls
    assert [(c.function.name, c.function.arguments) for c in whole.message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in streamed.tool_calls
    ]


def function_calls(message: ChatCompletionMessage) -> list[tuple[str, str]]:
    out = []
    for call in message.tool_calls or ():
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        out.append((call.function.name, call.function.arguments))
    return out


def test_named_choice_single_call_and_none(server: str) -> None:
    client = sdk(server)
    named = client.chat.completions.create(
        model="any",
        messages=ASK,
        tools=TOOLS,
        tool_choice=TIME_CHOICE,
        max_tokens=150,
        temperature=0,
    ).choices[0]
    assert named.message.tool_calls and {name for name, _ in function_calls(named.message)} == {"get_time"}
    single = client.chat.completions.create(
        model="any",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=150,
        temperature=0,
    ).choices[0]
    [(name, arguments)] = function_calls(single.message)  # exactly one call
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])
    none = client.chat.completions.create(
        model="any", messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=10, temperature=0
    ).choices[0]
    assert (
        none.message.tool_calls is None and none.message.content and none.finish_reason in ("stop", "length")
    )
    raw = httpx.post(
        f"{server}/v1/chat/completions",
        json={"messages": ASK, "tools": TOOLS, "tool_choice": "none", "max_tokens": 5},
        timeout=600,
    ).json()
    assert "tool_calls" not in raw["choices"][0]["message"]  # absent, not null, when there are none


def test_auto_gives_either_a_reply_or_valid_calls(server: str) -> None:
    choice = (
        sdk(server)
        .chat.completions.create(
            model="any",
            messages=ASK,
            tools=TOOLS,
            parallel_tool_calls=False,
            max_tokens=100,
            temperature=1.0,
            seed=1,
        )
        .choices[0]
    )
    calls = function_calls(choice.message)
    if choice.finish_reason == "tool_calls":  # a finished call: exactly one, valid
        assert len(calls) == 1
        jsonschema.validate(json.loads(calls[0][1]), SCHEMAS[calls[0][0]])
    else:  # a plain reply (or anything cut by max_tokens): content, or a call still being written
        assert choice.finish_reason in ("stop", "length")
        assert choice.message.content or (calls and choice.finish_reason == "length")


def test_a_full_round_trip_calls_then_results_then_an_answer(server: str) -> None:
    client = sdk(server)
    first = (
        client.chat.completions.create(
            model="any", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=150, temperature=0
        )
        .choices[0]
        .message
    )
    assert first.tool_calls
    history: list[Any] = [*ASK, first.model_dump(exclude_none=True)]
    for call in first.tool_calls:
        history.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C, 14:05"})
    # ignore_eos: under a template it was not trained on (Mistral's), the model ends its turn at once
    answer = client.chat.completions.create(
        model="any",
        messages=history,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=40,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None
    assert answer.usage and answer.usage.prompt_tokens > 60  # the calls and results reached the prompt


# -- refusals ---------------------------------------------------------------------------------------

REFUSALS = [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "custom", "custom": {"name": "grep"}}]}, "tools[0].type"),
    (
        {
            "tools": TOOLS,
            "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
        },
        "tool_choice",
    ),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    (
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {"x": {"type": "string", "pattern": "(?<=a)b"}},
                        },
                    },
                }
            ],
            "tool_choice": "required",
        },
        "tools",
    ),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(?<=a)b"}},
            }
        },
        "response_format.json_schema.schema",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format.json_schema",
    ),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
]


@pytest.mark.parametrize(("fields", "param"), REFUSALS)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    base_url: str, fields: dict[str, Any], param: str
) -> None:
    body = {"messages": ASK, "max_tokens": 5, **fields}
    for stream in (False, True):
        response = httpx.post(f"{base_url}/v1/chat/completions", json={**body, "stream": stream}, timeout=600)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"


# -- langchain-openai --------------------------------------------------------------------------------


@tool
def get_weather(city: str, unit: str) -> str:
    """The weather in a city, in celsius or fahrenheit."""
    return f"sunny in {city}"


class Forecast(pydantic.BaseModel):
    """A weather forecast."""

    # Closed, as OpenAI's strict schemas are: an open schema lets a small model add properties forever.
    model_config = pydantic.ConfigDict(extra="forbid")

    city: str = pydantic.Field(max_length=30)
    temperature: int = pydantic.Field(ge=-50, le=60)
    sunny: bool


def test_langchain_bind_tools_and_structured_output_in_three_modes(base_url: str) -> None:
    llm = ChatOpenAI(
        base_url=f"{base_url}/v1",
        api_key=SecretStr("unused"),
        model="any",
        temperature=0,
        max_completion_tokens=150,
        timeout=600,
    )
    reply = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert isinstance(reply, AIMessage) and reply.tool_calls
    assert reply.tool_calls[0]["name"] == "get_weather" and set(reply.tool_calls[0]["args"]) == {
        "city",
        "unit",
    }
    methods: tuple[Literal["json_schema", "function_calling"], ...] = ("json_schema", "function_calling")
    for method in methods:
        forecast = llm.with_structured_output(Forecast, method=method).invoke("Forecast for Rome as JSON.")
        assert isinstance(forecast, Forecast)
    # json_mode constrains to any object: the default model may fill one until max_tokens (a string of
    # zeros, say), which the SDK reports as LengthFinishReasonError; what was sent is still an object.
    try:
        loose = llm.with_structured_output(method="json_mode").invoke("Forecast for Rome as a JSON object.")
        assert isinstance(loose, dict)
    except openai.LengthFinishReasonError as cut:
        content = cut.completion.choices[0].message.content
        assert content is not None and content.startswith("{"), content


# -- TGI grammar -------------------------------------------------------------------------------------


def test_tgi_grammar_json_schema_and_regex_with_huggingface_hub(base_url: str) -> None:
    hub = InferenceClient(base_url=base_url, timeout=600)
    schema = Forecast.model_json_schema()
    for value in (schema, json.dumps(schema)):  # TGI takes the schema as an object or as JSON text
        grammar = TextGenerationInputGrammarType(type="json", value=value)
        text = hub.text_generation("Forecast for Rome:", grammar=grammar, max_new_tokens=120)
        Forecast.model_validate_json(text)
    date = hub.text_generation(
        "Today's date:",
        grammar=TextGenerationInputGrammarType(type="regex", value=r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"),
        max_new_tokens=20,
    )
    assert len(date) == 10 and date[4] == "-" and date[:2] == "20"
    digits = TextGenerationInputGrammarType(type="regex", value=r"[0-9]{4}")
    streamed = "".join(hub.text_generation("Today's date:", grammar=digits, max_new_tokens=10, stream=True))
    assert len(streamed) == 4 and streamed.isdigit()


@pytest.mark.parametrize(
    "grammar",
    [
        {"type": "lark", "value": "start: /a/"},
        {"type": "regex", "value": "(?<=a)b"},
        {"type": "json", "value": "{not json"},
        {"type": "json_schema", "value": {"name": "x"}},
    ],
)
def test_tgi_refuses_a_grammar_it_cannot_enforce_with_422_naming_it(
    base_url: str, grammar: dict[str, Any]
) -> None:
    for route in ("/generate", "/generate_stream", "/"):
        response = httpx.post(
            f"{base_url}{route}",
            json={"inputs": "x", "parameters": {"grammar": grammar, "max_new_tokens": 5}},
            timeout=600,
        )
        assert response.status_code == 422, response.text
        assert response.json()["error_type"] == "validation" and "grammar" in response.json()["error"]


def test_tgi_json_schema_grammar_on_the_compat_route(base_url: str) -> None:
    schema = Forecast.model_json_schema()
    response = httpx.post(
        f"{base_url}/",
        json={
            "inputs": "Forecast:",
            "parameters": {
                "grammar": {"type": "json_schema", "value": {"name": "f", "schema": schema}},
                "max_new_tokens": 120,
            },
        },
        timeout=600,
    )
    assert response.status_code == 200
    Forecast.model_validate_json(response.json()[0]["generated_text"])
