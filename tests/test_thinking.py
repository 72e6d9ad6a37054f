"""Thinking models on chat completions: the thought apart from the answer, streamed and not, with a
budget that closes it, switched off, before a tool call or a structured answer, and in the history.

Servers: the default model's weights under real thinking templates whose markers are tokens of their
own (tests/conftest.py). The model does not know those tokens, so each test steers it: under the
DeepSeek-R1 and QwQ templates the prompt opens the thought; under Qwen3's, ``logit_bias`` makes the
model open it. The servers close a thought after 12 tokens (``--reasoning-budget 12``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from httpx_sse import connect_sse
from openai.types.chat import ChatCompletionChunk

from engine import ChatMessage, ValidationError
from engine.chat import ChatTemplate
from engine.thinking import ANSWER, MARKER, THOUGHT, Thought
from engine.types import Thinking
from server.conversation.reply import Reply
from server.conversation.thinking import PromptEnd, ThoughtText, effort_budget, find_thinking, prompt_end
from server.conversation.tool_formats import ToolFormat, ToolPlan
from server.conversation.types import CallStart, Reasoning, Text, Tool
from tests.conftest import TEMPLATES, THINK, TOOL_CALL, ServerFactory
from tests.model_variants import thinking_model

NO_END_OF_TURN = {"2": -100}  # <|im_end|>: the model may not end its turn inside the thought
ASK: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def stream_chat(url: str, **body: Any) -> openai.Stream[ChatCompletionChunk]:
    messages = body.pop("messages", ASK)
    stream: openai.Stream[ChatCompletionChunk] = sdk(url).chat.completions.create(
        model="m", messages=messages, stream=True, **body
    )
    return stream


def chat(url: str, **body: Any) -> Any:
    return sdk(url).chat.completions.create(model="m", messages=body.pop("messages", ASK), **body)


def chunks(url: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with (
        httpx.Client(timeout=120) as client,
        connect_sse(client, "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as events,
    ):
        for event in events.iter_sse():
            if event.data != "[DONE]":
                yield json.loads(event.data)


# -- the parts, without a model ----------------------------------------------------------------------


def test_markers_are_found_in_a_template_only_as_tokens() -> None:
    template = (TEMPLATES / "qwen3.jinja").read_text()
    found, line = find_thinking(template, {"<think>": 7, "</think>": 8}.get, 100)
    assert found is not None and (found.start, found.end, found.switch) == (7, 8, True)
    assert "7/8" in line and "enable_thinking" in line and "100 tokens" in line
    missing, why = find_thinking(template, lambda text: None, None)
    assert missing is None and "not tokens" in why
    assert find_thinking("{{ messages }}", {"<think>": 7}.get, None)[0] is None


def test_where_the_prompt_leaves_the_thought() -> None:
    found, _ = find_thinking("<think></think>", {"<think>": 7, "</think>": 8}.get, None)
    assert found is not None
    blank = {1: False, 2: True}.__getitem__  # token 2 is whitespace

    assert prompt_end([1, 7, 2], found, blank) is PromptEnd.OPEN
    assert prompt_end([1, 7, 2, 8, 2, 2], found, blank) is PromptEnd.CLOSED
    assert prompt_end([7, 8, 1, 2], found, blank) is PromptEnd.FREE


def test_a_thought_is_followed_token_by_token() -> None:
    opened = Thought(Thinking(start=7, end=8, opened=True, budget=2))
    assert [opened.advance(t) for t in (5, 5)] == [THOUGHT, THOUGHT]
    assert opened.forced() == 8  # the budget is spent: the engine closes the thought
    assert opened.advance(8) == MARKER and opened.answering
    assert opened.advance(7) == ANSWER  # a marker in the answer is text
    assert opened.tokens == 3

    free = Thought(Thinking(start=7, end=8))
    assert not free.guided(7) and free.guided(5)  # the grammar never judges the opening marker
    assert free.advance(5) == ANSWER and free.answering  # no thought: the first token decides

    constrained = Thought(Thinking(start=7, end=8, opened=True))
    assert constrained.instead_of_end_of_turn(constrained=True) == 8
    assert constrained.instead_of_end_of_turn(constrained=False) == -1


def test_a_streamed_thought_is_shown_as_the_whole_one() -> None:
    stream = ThoughtText()
    pieces = ["\n", "  Let", " me", " think.", "\n\n", "Yes", ".\n"]
    shown = "".join(stream.push(p) for p in pieces)
    assert shown == "".join(pieces).strip() == "Let me think.\n\nYes."


def test_a_tool_call_written_inside_a_thought_is_reasoning_text() -> None:
    tools = ToolPlan(ToolFormat.HERMES, (Tool("get_weather", None, {"type": "object"}),), required=False)
    reply = Reply(tools, thinking=True)
    call = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    assert reply.push(call, reasoning=True) == [Reasoning(call)]
    answer = reply.push("\n\n" + call) + reply.finish()
    assert [d.name for d in answer if isinstance(d, CallStart)] == ["get_weather"]
    assert not any(isinstance(d, Text) for d in answer)


def test_reasoning_effort_names_a_budget() -> None:
    assert effort_budget(None, "reasoning_effort") is None
    none = effort_budget("none", "reasoning_effort")
    assert none is not None and not none.enabled
    minimal = effort_budget("minimal", "reasoning_effort")
    assert minimal is not None and minimal.budget == 256
    with pytest.raises(Exception, match="reasoning_effort"):
        effort_budget("extreme", "reasoning_effort")


# -- over HTTP, with the openai SDK --------------------------------------------------------------------


def test_the_thought_is_reasoning_content_and_the_answer_content(r1_url: str) -> None:
    answer = chat(r1_url, max_tokens=40, temperature=0, logit_bias=NO_END_OF_TURN)
    message = answer.choices[0].message
    assert message.reasoning_content and message.reasoning == message.reasoning_content
    assert message.content and message.reasoning_content not in message.content
    assert message.content == message.content.lstrip()  # the blank lines after the thought are gone
    # 12 tokens of thought (the budget) and the end marker the server wrote; the prompt opened it
    assert answer.usage.completion_tokens_details.reasoning_tokens == 13
    assert answer.choices[0].finish_reason == "length"


def test_streamed_thought_comes_first_and_matches_the_whole_answer(r1_url: str) -> None:
    body = {"messages": ASK, "max_tokens": 40, "temperature": 0, "logit_bias": NO_END_OF_TURN}
    whole = chat(r1_url, **body).choices[0].message
    kinds, thought, content = [], "", ""
    for chunk in chunks(r1_url, body):
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if "reasoning_content" in delta:
                assert delta["reasoning"] == delta["reasoning_content"]
                thought += delta["reasoning_content"]
                kinds.append("thought")
            if delta.get("content"):
                content += delta["content"]
                kinds.append("answer")
    assert kinds.index("answer") == kinds.count("thought")  # every thought delta before the answer
    assert (thought, content) == (whole.reasoning_content, whole.content)


def test_the_sdk_stream_carries_reasoning_content(r1_url: str) -> None:
    stream = stream_chat(r1_url, max_tokens=30, temperature=0, logit_bias=NO_END_OF_TURN)
    thought = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in stream if c.choices
    )
    assert thought


def test_a_request_budget_closes_the_thought_and_max_tokens_counts_both(r1_url: str) -> None:
    # "minimal" is 256 tokens of thought: more than max_tokens, so the thought takes all of them
    answer = chat(r1_url, max_tokens=20, temperature=0, logit_bias=NO_END_OF_TURN, reasoning_effort="minimal")
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == answer.usage.completion_tokens_details.reasoning_tokens == 20
    assert not answer.choices[0].message.content


def test_thinking_switched_off_renders_the_template_without_a_thought(qwen3_url: str, r1_url: str) -> None:
    for url in (qwen3_url, r1_url):  # both templates read enable_thinking
        for off in (
            {"reasoning_effort": "none"},
            {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
        ):
            answer = chat(url, max_tokens=8, temperature=0, logit_bias={str(THINK): 100}, **off)
            message = answer.choices[0].message
            assert getattr(message, "reasoning_content", None) is None
            assert answer.usage.completion_tokens_details is None
            assert message.content.startswith("<think>")  # a marker after the thought is just text


def test_contradicting_thinking_switches_are_refused(qwen3_url: str) -> None:
    with pytest.raises(openai.BadRequestError, match="contradicts"):
        chat(
            qwen3_url,
            max_tokens=4,
            reasoning_effort="high",
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
    with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
        chat(qwen3_url, max_tokens=4, reasoning_effort="extreme")


def test_the_model_opens_its_own_thought_and_a_forced_tool_call_follows_it(qwen3_url: str) -> None:
    answer = chat(
        qwen3_url,
        max_tokens=60,
        temperature=0,
        logit_bias={str(THINK): 100},
        tools=[WEATHER],
        tool_choice="required",
    )
    message = answer.choices[0].message
    assert message.reasoning_content == "<think>" * 12  # the marker, written again inside, is text
    assert answer.choices[0].finish_reason == "tool_calls"
    [call] = message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_a_tool_call_inside_the_thought_is_not_a_call(qwq_url: str) -> None:
    answer = chat(
        qwq_url,
        max_tokens=60,
        temperature=0,
        logit_bias={str(TOOL_CALL): 100},
        tools=[WEATHER],
        parallel_tool_calls=False,
    )
    message = answer.choices[0].message
    assert message.reasoning_content == "<tool_call>" * 12
    # the answer's own call, the only one: none of the twelve markers of the thought became a call
    assert [c.function.name for c in message.tool_calls] == ["get_weather"]


def test_a_structured_answer_starts_after_a_free_thought(r1_url: str) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    for stream in (False, True):
        body: dict[str, Any] = {
            "messages": ASK,
            "max_tokens": 60,
            "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        }
        if stream:
            content = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks(r1_url, body) if c["choices"]
            )
        else:
            message = chat(r1_url, **body).choices[0].message
            assert message.reasoning_content and "{" not in message.reasoning_content[:1]
            content = message.content
        jsonschema.validate(json.loads(content), schema)


def test_a_stop_string_inside_the_thought_ends_the_generation(r1_url: str) -> None:
    thought = (
        chat(r1_url, max_tokens=30, temperature=0, logit_bias=NO_END_OF_TURN)
        .choices[0]
        .message.reasoning_content
    )
    words = thought.split()
    assert len(words) >= 3
    stop = words[2]
    answer = chat(r1_url, max_tokens=30, temperature=0, logit_bias=NO_END_OF_TURN, stop=[stop])
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "stop"
    assert message.reasoning_content == thought[: thought.index(stop)].strip()
    assert not message.content


def test_earlier_thoughts_reach_the_template_that_reads_them(qwen3_url: str) -> None:
    # Qwen3's template shows a thought only in assistant turns after the last user message: a tool loop.
    def prompt_tokens(thought: str | None) -> int:
        turn: dict[str, Any] = {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        }
        if thought is not None:
            turn["reasoning_content"] = thought
        messages = [*ASK, turn, {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
        answer = chat(qwen3_url, messages=messages, max_tokens=1, tools=[WEATHER])
        return int(answer.usage.prompt_tokens)

    assert prompt_tokens("I should look up the weather in Paris first.") > prompt_tokens(None) + 5


def test_the_next_turn_reuses_the_cached_prompt(r1_url: str) -> None:
    first = chat(r1_url, max_tokens=30, temperature=0, logit_bias=NO_END_OF_TURN)
    message = first.choices[0].message
    turn = {"role": "assistant", "content": message.content, "reasoning_content": message.reasoning_content}
    messages = [*ASK, turn, {"role": "user", "content": "And of Italy?"}]
    second = chat(r1_url, messages=messages, max_tokens=5, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 2


@pytest.fixture(scope="module")
def r1_plain_url(model_path: str, start_server: ServerFactory) -> Iterator[str]:
    model = thinking_model(model_path, "deepseek-r1-distill-qwen")
    with start_server("--model", str(model), "--reasoning-format", "none") as url:
        yield url


def test_reasoning_format_none_leaves_the_thought_in_the_text(r1_plain_url: str) -> None:
    body = {"messages": ASK, "max_tokens": 12, "temperature": 0, "logit_bias": NO_END_OF_TURN}
    raw = httpx.post(f"{r1_plain_url}/v1/chat/completions", json=body, timeout=60).text
    assert "reasoning" not in raw
    streamed = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks(r1_plain_url, body) if c["choices"]
    )
    assert streamed == json.loads(raw)["choices"][0]["message"]["content"] != ""


def test_template_kwargs_cannot_replace_what_the_server_sets_or_break_the_template(qwen3_url: str) -> None:
    with pytest.raises(openai.BadRequestError, match=r"chat_template_kwargs\.messages"):
        chat(qwen3_url, max_tokens=4, extra_body={"chat_template_kwargs": {"messages": 1}})
    template = ChatTemplate("{{ size + 1 }}", "", "")
    with pytest.raises(ValidationError, match="template failed: TypeError"):
        template.render((ChatMessage("user", "hi"),), extra={"size": "big"})
