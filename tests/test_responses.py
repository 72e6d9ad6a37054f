"""OpenAI's Responses API over HTTP with the openai SDK and the openai-agents SDK: the default model
(no tool support in its template: the generic tool format) and the real tool-calling Qwen model.

Where a tiny model's ability is the limit (Qwen-0.5B often answers a tool result with another bare
JSON object), the tests assert what the server owns: shapes, ids, order, the store, the constraint."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pydantic
import pytest
from httpx_sse import connect_sse

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
TIME: Any = {
    "type": "function",
    "name": "get_time",
    "description": "The time in a timezone",
    "parameters": {
        "type": "object",
        "properties": {"timezone": {"type": "string", "maxLength": 20}},
        "required": ["timezone"],
    },
}
ASK = "What is the weather in Paris?"


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


# -- the default model ---------------------------------------------------------------------------


def test_text_with_instructions_and_usage(base_url: str) -> None:
    r = client(base_url).responses.create(
        model="gpt-x", input="Say hello.", instructions="Answer in one short sentence.",
        max_output_tokens=24, temperature=0, metadata={"k": "v"}, reasoning=None, include=[],
    )  # fmt: skip
    assert r.id.startswith("resp_") and r.object == "response" and r.model == "gpt-x"
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    assert r.instructions == "Answer in one short sentence." and r.metadata == {"k": "v"}
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    u = r.usage
    assert u is not None and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens >= 0 and u.output_tokens_details.reasoning_tokens == 0


def test_max_output_tokens_gives_incomplete(base_url: str) -> None:
    r = client(base_url).responses.create(
        model="m", input="Tell me a long story about the sea.", max_output_tokens=3, temperature=0
    )
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 3


def test_stream_events_follow_the_documented_order(base_url: str) -> None:
    """Responses streaming docs: created, in_progress, output_item.added, content_part.added,
    output_text.delta..., output_text.done, content_part.done, output_item.done, completed; each
    event with an ``event:`` line naming its type and a sequence_number counting from 0."""
    body = {"model": "m", "input": "Say hello.", "stream": True, "max_output_tokens": 200, "temperature": 0}
    with httpx.Client(timeout=120) as c, connect_sse(c, "POST", f"{base_url}/v1/responses", json=body) as s:
        assert s.response.headers["content-type"].startswith("text/event-stream")
        got = [(e.event, json.loads(e.data)) for e in s.iter_sse()]
    assert all(name == data["type"] for name, data in got)
    assert [d["sequence_number"] for _, d in got] == list(range(len(got)))
    kinds = [name for name, _ in got]
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    item = got[2][1]["item"]
    assert item["status"] == "in_progress" and item["content"] == []
    assert {d["item_id"] for _, d in got[3:-2]} == {item["id"]}
    assert {d["output_index"] for _, d in got[2:-1]} == {0}
    text = "".join(d["delta"] for n, d in got if n == "response.output_text.delta")
    final = got[-1][1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == text
    assert final["id"] == got[0][1]["response"]["id"] and final["usage"]["output_tokens"] > 0


def test_sdk_stream_helper_and_final_response(base_url: str) -> None:
    with client(base_url).responses.stream(
        model="m", input="Say hello.", max_output_tokens=200, temperature=0
    ) as s:
        text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert final.status == "completed" and final.output_text == text


class City(pydantic.BaseModel):
    name: str
    country: str


def test_parse_with_a_text_format(base_url: str) -> None:
    r = client(base_url).responses.parse(
        model="m", input="Name a city in France.", text_format=City, max_output_tokens=60, temperature=0
    )
    assert isinstance(r.output_parsed, City)
    assert r.text is not None and r.text.format is not None and r.text.format.type == "json_schema"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_time"}])
def test_required_and_named_tool_calls(base_url: str, choice: Any) -> None:
    r = client(base_url).responses.create(
        model="m", input=ASK, tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=False,
        max_output_tokens=80, temperature=0,
    )  # fmt: skip
    calls = [o for o in r.output if o.type == "function_call"]
    assert r.status == "completed" and len(calls) == 1
    call = calls[0]
    assert call.id is not None and call.id.startswith("fc_") and call.call_id and call.status == "completed"
    if isinstance(choice, dict):
        assert call.name == "get_time"
    assert isinstance(json.loads(call.arguments), dict)


def test_a_function_call_output_round_trip(base_url: str) -> None:
    c = client(base_url)
    first = c.responses.create(
        model="m", input=ASK, tools=[WEATHER], tool_choice="required", max_output_tokens=60, temperature=0,
        parallel_tool_calls=False,
    )  # fmt: skip
    call = next(o for o in first.output if o.type == "function_call")
    history: Any = [
        {"role": "user", "content": ASK},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"},
    ]
    second = c.responses.create(
        model="m", input=history, tools=[WEATHER], tool_choice="none", max_output_tokens=40, store=False
    )
    assert second.output[0].type == "message" and second.output_text.strip()
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(second.id)  # store: false keeps nothing


def test_previous_response_id_get_delete_and_unknown_ids(base_url: str) -> None:
    c = client(base_url)
    first = c.responses.create(model="m", input="My name is Ada.", max_output_tokens=16, temperature=0)
    follow = c.responses.create(
        model="m", input="What is my name?", previous_response_id=first.id, max_output_tokens=16
    )
    assert follow.previous_response_id == first.id
    assert follow.usage is not None and first.usage is not None
    # the follow-up's prompt holds the first exchange: longer, and mostly served from the cache
    assert follow.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert follow.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 1
    got = c.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    c.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as missing:
        c.responses.retrieve(first.id)
    assert first.id in str(missing.value)
    with pytest.raises(openai.NotFoundError) as unknown:
        c.responses.create(model="m", input="hi", previous_response_id="resp_nope", max_output_tokens=4)
    body: Any = unknown.value.body
    assert body["param"] == "previous_response_id" and "resp_nope" in body["message"]
    response = httpx.delete(f"{base_url}/v1/responses/resp_nope", timeout=30)
    assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"type": "mystery"}]}, "input[0].type"),
        ({"truncation": "auto"}, "truncation"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"text": {"format": {}}}, "text.format.type"),  # a missing nested field: its whole path
    ],
)  # fmt: skip
def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    base_url: str, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "m", "input": "hi", **fields}
    response = httpx.post(f"{base_url}/v1/responses", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_a_too_long_input_fails_the_stream_with_context_length_exceeded(base_url: str) -> None:
    body = {"model": "m", "input": "word " * 12000, "stream": True}
    with httpx.Client(timeout=120) as c, connect_sse(c, "POST", f"{base_url}/v1/responses", json=body) as s:
        got = [(e.event, json.loads(e.data)) for e in s.iter_sse()]
    assert [name for name, _ in got] == ["response.created", "response.in_progress", "response.failed"]
    error = got[-1][1]["response"]["error"]
    assert error["code"] == "context_length_exceeded" and "tokens" in error["message"]
    plain = httpx.post(f"{base_url}/v1/responses", json={**body, "stream": False}, timeout=120)
    assert plain.status_code == 400 and plain.json()["error"]["param"] == "input"


# -- the real tool-calling model -----------------------------------------------------------------


def test_qwen_streams_a_call_in_the_sdk_helper_and_answers_a_round_trip(qwen_url: str) -> None:
    c = client(qwen_url)
    with c.responses.stream(
        model="qwen", input=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
        max_output_tokens=60, temperature=0,
    ) as s:  # fmt: skip
        events = list(s)
        final = s.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds.count("response.function_call_arguments.delta") > 1  # fragments, as generated
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments)["city"] == "Paris"
    follow = c.responses.create(
        model="qwen", previous_response_id=final.id, tools=[WEATHER], max_output_tokens=40, temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}],
    )  # fmt: skip
    # The 0.5B model may answer the result or call again (bare calls, several in a row, until the token
    # budget): the server owns a well-formed answer and the prompt cache's reuse of the first turn.
    assert follow.status in ("completed", "incomplete") and follow.output
    assert follow.usage is not None and follow.usage.input_tokens_details.cached_tokens > 0


def test_qwen_auto_tool_choice_answers_a_call_or_text(qwen_url: str) -> None:
    r = client(qwen_url).responses.create(
        model="qwen", input=ASK, tools=[WEATHER, TIME], max_output_tokens=60, temperature=0
    )
    assert r.status == "completed"
    for item in r.output:
        if item.type == "function_call":  # a call the parser accepted names a declared tool
            assert item.name in ("get_weather", "get_time") and isinstance(json.loads(item.arguments), dict)
        else:
            assert item.type == "message"


def test_the_agents_sdk_default_model_runs_a_function_tool(qwen_url: str) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"Sunny, 24 C in {city}"

    model = OpenAIResponsesModel(
        model="qwen", openai_client=openai.AsyncOpenAI(base_url=f"{qwen_url}/v1", api_key="none")
    )
    agent = Agent(
        name="weather",
        instructions="Use the tools to answer.",
        tools=[get_weather],
        model=model,
        model_settings=ModelSettings(
            tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=60
        ),
        tool_use_behavior="stop_on_first_tool",
    )
    result = Runner.run_sync(agent, ASK, max_turns=2)
    assert asked and asked[0].startswith("Paris")
    assert result.final_output == f"Sunny, 24 C in {asked[0]}"
    assert result.context_wrapper.usage.input_tokens > 0  # built from response.completed's usage
