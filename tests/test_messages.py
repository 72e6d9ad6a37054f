"""Anthropic's Messages API over HTTP with the anthropic SDK: the default model and the real
tool-calling Qwen model. Where a tiny model's ability is the limit, the tests assert what the server
owns (shapes, ids, event order, stop reasons, usage, errors)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from httpx_sse import connect_sse

from tests.conftest import ServerFactory
from tests.load import LONG

KEY = "sesame"
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
    },
}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
HI: Any = [{"role": "user", "content": "Say hello."}]
GREEDY = {"temperature": 0}  # this Anthropic SDK takes no temperature argument


def client(url: str, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=url, api_key=kw.pop("api_key", "none"), max_retries=0, timeout=120, **kw
    )


@pytest.fixture(scope="module")
def keyed_url(start_server: ServerFactory) -> Iterator[str]:
    """An API key, one slot and one request admitted at a time: auth and overload."""
    with start_server("--api-key", KEY, "--max-concurrent-requests", "1", "--parallel", "1") as url:
        yield url


# -- the default model ---------------------------------------------------------------------------


def test_text_with_system_blocks_and_usage(base_url: str) -> None:
    m = client(base_url).messages.create(
        model="claude-sonnet-4-5", max_tokens=24, messages=HI, metadata={"user_id": "u"},
        system=[{"type": "text", "text": "Answer briefly.", "cache_control": {"type": "ephemeral"}}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )  # fmt: skip
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.model == "claude-sonnet-4-5" and m.stop_reason in ("end_turn", "max_tokens")
    assert m.content[0].type == "text" and m.content[0].text.strip()
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) > 5
    assert m.usage.cache_creation_input_tokens == 0 and 0 < m.usage.output_tokens <= 24


def test_stream_events_follow_the_documented_order(base_url: str) -> None:
    """Messages streaming docs: message_start (content empty), content_block_start,
    content_block_delta..., content_block_stop, message_delta, message_stop; pings anywhere; each
    with an ``event:`` line naming its type."""
    body = {"model": "claude", "max_tokens": 200, "messages": HI, "stream": True, "temperature": 0}
    with httpx.Client(timeout=120) as c, connect_sse(c, "POST", f"{base_url}/v1/messages", json=body) as s:
        got = [(e.event, json.loads(e.data)) for e in s.iter_sse()]
    assert all(name == data["type"] for name, data in got)
    kinds = [name for name, _ in got if name != "ping"]
    deltas = kinds.count("content_block_delta")
    assert deltas > 1
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = got[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    blocks = [d for name, d in got if name.startswith("content_block")]
    assert {d["index"] for d in blocks} == {0}
    assert blocks[0]["content_block"] == {"type": "text", "text": ""}
    assert all(d["delta"]["type"] == "text_delta" for d in blocks[1:-1])
    delta = got[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] > 0


def test_sdk_stream_and_stop_sequences(base_url: str) -> None:
    c = client(base_url)
    with c.messages.stream(model="claude", max_tokens=200, messages=HI) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text and text
    # greedy: a sampled answer may end its turn before any space (a one-word reply), as CI once saw
    stopped = c.messages.create(
        model="claude", max_tokens=60, messages=HI, stop_sequences=[" "], extra_body=GREEDY
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " "
    assert " " not in stopped.content[0].text  # type: ignore[union-attr]
    with c.messages.stream(
        model="claude", max_tokens=60, messages=HI, stop_sequences=[" "], extra_body=GREEDY
    ) as s:
        streamed = s.get_final_message()
    assert streamed.stop_reason == "stop_sequence" and streamed.stop_sequence == " "
    short = c.messages.create(model="claude", max_tokens=2, messages=HI)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2


def test_count_tokens_matches_the_prompt_a_message_uses(base_url: str) -> None:
    c = client(base_url)
    system = "You count."
    counted = c.messages.count_tokens(model="claude", system=system, messages=HI)
    m = c.messages.create(model="claude", system=system, messages=HI, max_tokens=2)
    assert counted.input_tokens == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)


def test_generic_tool_use_and_a_tool_result_round_trip(base_url: str) -> None:
    # No other keys: at Anthropic's default temperature of 1, the 135M model sometimes wrote properties
    # of its own until max_tokens (1 or 2 runs in 12, with or without speculation); the round trip is
    # what this tests
    weather: Any = {**WEATHER, "input_schema": {**WEATHER["input_schema"], "additionalProperties": False}}
    c = client(base_url)
    first = c.messages.create(
        model="claude", max_tokens=60, messages=ASK, tools=[weather],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )  # fmt: skip
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.id.startswith("toolu_") and use.name == "get_weather" and isinstance(use.input, dict)
    second = c.messages.create(
        model="claude", max_tokens=30, tools=[weather], tool_choice={"type": "none"},
        messages=[*ASK, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}]}],
    )  # fmt: skip
    assert second.content[0].type == "text" and second.stop_reason in ("end_turn", "max_tokens")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
         "messages[0].content[0].type"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
         "messages[0].content[0].tool_use_id"),
    ],
)  # fmt: skip
def test_invalid_requests_are_400_invalid_request_error_naming_the_field(
    base_url: str, body: dict[str, Any], param: str
) -> None:
    request = {"model": "claude", "max_tokens": 5, "messages": HI, **body}
    if request["max_tokens"] is None:
        del request["max_tokens"]
    response = httpx.post(f"{base_url}/v1/messages", json=request, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert param in error["error"]["message"]


def test_a_prompt_over_the_context_says_so_with_the_counts(base_url: str) -> None:
    longest = httpx.get(f"{base_url}/info", timeout=30).json()["max_input_tokens"]
    with pytest.raises(anthropic.BadRequestError) as refused:
        client(base_url).messages.create(  # " word" is one token in the vocabularies under test
            model="claude", max_tokens=5, messages=[{"role": "user", "content": "word " * (longest + 100)}]
        )
    message = str(refused.value)
    assert "prompt is too long:" in message and "tokens >" in message and "maximum" in message


def test_not_found_and_request_too_large_in_anthropic_shape(base_url: str) -> None:
    missing = httpx.post(f"{base_url}/v1/messages/nope", json={}, timeout=30)
    assert missing.status_code == 404
    assert missing.json()["type"] == "error" and missing.json()["error"]["type"] == "not_found_error"
    huge: Any = [{"role": "user", "content": "x" * 2_100_000}]
    with pytest.raises(anthropic.APIStatusError) as refused:
        client(base_url).messages.create(model="claude", max_tokens=5, messages=huge)
    assert refused.value.status_code == 413
    assert refused.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


# -- key and overload ----------------------------------------------------------------------------


@contextlib.contextmanager
def holding(url: str) -> Iterator[None]:
    """One long stream holds the keyed server's only admission until the block ends."""
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        with (
            httpx.Client(timeout=120) as c,
            c.stream("POST", f"{url}/v1/completions", json=LONG, headers=headers) as r,
        ):
            for _ in r.iter_lines():
                started.set()
                if release.is_set():
                    return

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert started.wait(60), "the holding request did not start"
    try:
        yield
    finally:
        release.set()
        thread.join(30)


def test_x_api_key_and_bearer_both_work_and_a_wrong_key_is_authentication_error(keyed_url: str) -> None:
    assert client(keyed_url, api_key=KEY).messages.count_tokens(model="c", messages=HI).input_tokens > 0
    bearer = httpx.post(
        f"{keyed_url}/v1/messages/count_tokens",
        json={"model": "c", "messages": HI},
        headers={"Authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert bearer.status_code == 200
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client(keyed_url, api_key="wrong").messages.create(model="c", max_tokens=5, messages=HI)
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid or missing API key"},
    }


def test_overload_is_a_429_overloaded_error_the_sdk_backs_off_from(keyed_url: str) -> None:
    statuses: list[int] = []
    hooks = {"response": [lambda r: statuses.append(r.status_code)]}
    with holding(keyed_url):
        with pytest.raises(anthropic.RateLimitError) as refused:
            client(keyed_url, api_key=KEY).messages.create(model="c", max_tokens=5, messages=HI)
        assert refused.value.body == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Model is overloaded"},
        }
        assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
        # With retries, the SDK waits as Retry-After says and gets through once the slot frees.
        answer: list[Any] = []
        retrying = client(keyed_url, api_key=KEY, http_client=anthropic.DefaultHttpxClient(event_hooks=hooks))
        retrying = retrying.with_options(max_retries=8)
        thread = threading.Thread(
            target=lambda: answer.append(retrying.messages.create(model="c", max_tokens=5, messages=HI))
        )
        thread.start()
        while not statuses:  # the first try was refused while the slot is held
            thread.join(0.05)
    thread.join(120)
    assert statuses[0] == 429 and statuses[-1] == 200 and answer and answer[0].content


# -- the real tool-calling model -----------------------------------------------------------------


def test_qwen_streams_tool_use_as_input_json_deltas_and_takes_a_tool_result(qwen_url: str) -> None:
    c = client(qwen_url)
    with c.messages.stream(
        model="claude", max_tokens=60, messages=ASK, tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as s:  # fmt: skip
        events = list(s)
        final = s.get_final_message()
    fragments = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(fragments) > 1  # the arguments arrive as they are generated
    (use,) = final.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    assert json.loads("".join(fragments)) == use.input and use.input["city"] == "Paris"
    assert final.stop_reason == "tool_use"
    second = c.messages.create(
        model="claude", max_tokens=40, tools=[WEATHER],
        messages=[*ASK, {"role": "assistant", "content": final.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": [{"type": "text", "text": "Sunny, 24 C"}]}]}],
    )  # fmt: skip
    assert second.content and second.stop_reason in ("end_turn", "tool_use", "max_tokens")
    assert (second.usage.cache_read_input_tokens or 0) > 0  # the first turn's prompt came from the cache
