"""Thinking on Anthropic's Messages API: ``thinking`` in the request, a ``thinking`` block (streamed
as ``thinking_delta`` fragments and one ``signature_delta``) before the answer, thinking blocks sent
back in the history.

Pure tests of the translator and the stream first; then the anthropic SDK over HTTP against the
thinking fixtures (tests/conftest.py). The model does not know its marker tokens and Messages has no
``logit_bias`` to steer it, so thoughts are tested on the DeepSeek-R1 template (the prompt opens the
thought, the budget closes it) and Qwen3's template where nothing needs steering (the switch
``enable_thinking`` and the history's thoughts, seen in the prompt's length).
"""

from __future__ import annotations

import json
import re
from typing import Any

import anthropic
import httpx
import msgspec
import pytest
from httpx_sse import connect_sse

from engine import Completion, FinishEvent, FinishReason, TokenEvent, ValidationError
from engine.types import Timing, Usage
from server.anthropic import translate
from server.anthropic import wire as w
from server.anthropic.events import MessageStream, message_of, signature
from server.conversation.reply import Reply
from server.conversation.tool_formats import ToolFormat, ToolPlan
from server.conversation.types import ThinkingChoice, Tool
from tests.conftest import END_THINK, THINK
from tests.helpers import typed_events
from tests.test_messages import ASK, HI, WEATHER

# A tool call's round trip whose assistant turn thought first (its thinking block sent back).
THOUGHT = "The user wants the weather in Paris, so I call the tool."
HISTORY: Any = [
    *ASK,
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": THOUGHT, "signature": signature(THOUGHT)},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
    },
    {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"}],
    },
]
TIMING = Timing(0.0, 0.1, 0.2)


def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="none", max_retries=0, timeout=120)


def body(**fields: Any) -> w.MessagesRequest:
    return msgspec.convert({"messages": HI, "max_tokens": 100, **fields}, w.MessagesRequest)


def finish(text: str = "", reason: FinishReason = FinishReason.EOS) -> FinishEvent:
    return FinishEvent(TokenEvent(7, text), reason, Usage(30, 9, reasoning_tokens=5), TIMING)


def streamed(s: MessageStream, tokens: list[TokenEvent], last: FinishEvent) -> list[dict[str, Any]]:
    raw = b"".join(x for x in map(s.token, tokens) if x) + s.finish(last)
    return [f for f in typed_events(raw) if f["type"] != "ping"]


# -- the request ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("thinking", "choice"),
    [
        (None, ThinkingChoice(enabled=False)),  # Anthropic's default: no thought unless asked
        ({"type": "disabled"}, ThinkingChoice(enabled=False)),
        ({"type": "between_tools"}, ThinkingChoice(enabled=False)),
        ({"type": "enabled", "budget_tokens": 40}, ThinkingChoice(budget=40)),
        ({"type": "enabled", "budget_tokens": 1, "display": "omitted"}, ThinkingChoice(budget=1)),
        ({"type": "adaptive"}, ThinkingChoice()),  # the server's --reasoning-budget
    ],
)
def test_thinking_becomes_a_choice(thinking: Any, choice: ThinkingChoice) -> None:
    fields = {} if thinking is None else {"thinking": thinking}
    assert translate.conversation(body(**fields)).thinking == choice


@pytest.mark.parametrize(
    ("thinking", "field", "words"),
    [
        ({"type": "enabled", "budget_tokens": 100}, "thinking.budget_tokens", "greater than"),
        ({"type": "enabled", "budget_tokens": 500}, "thinking.budget_tokens", "greater than"),
        ({"type": "enabled"}, "thinking.budget_tokens", "required"),
        ({"type": "enabled", "budget_tokens": 0}, "thinking.budget_tokens", "at least 1"),
        ({"type": "sometimes"}, "thinking.type", "'enabled'"),
        ({"type": "adaptive", "display": "full"}, "thinking.display", "'omitted'"),
    ],
)
def test_bad_thinking_is_refused_naming_the_field(thinking: Any, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as refused:
        translate.conversation(body(thinking=thinking))
    assert refused.value.field == field and field in str(refused.value) and words in str(refused.value)


@pytest.mark.parametrize(
    ("effort", "choice"),
    [
        ("low", ThinkingChoice(budget=1024)),
        ("medium", ThinkingChoice(budget=4096)),
        ("max", ThinkingChoice(budget=-1)),
    ],
)
def test_output_config_effort_sizes_an_adaptive_thought(effort: str, choice: ThinkingChoice) -> None:
    adaptive = body(thinking={"type": "adaptive"}, output_config={"effort": effort})
    assert translate.conversation(adaptive).thinking == choice
    assert not translate.conversation(body(output_config={"effort": effort})).thinking.enabled


def test_output_config_format_is_the_output_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    config = translate.conversation(body(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert config.output is not None and config.output.schema == schema
    for bad, field in (
        ({"output_config": {"effort": "huge"}}, "output_config.effort"),
        ({"output_config": {"format": {"type": "xml"}}}, "output_config.format.type"),
        (
            {
                "output_config": {"format": {"type": "json_schema", "schema": schema}},
                "output_format": {"type": "json_schema", "schema": schema},
            },
            "output_config.format",
        ),
    ):
        with pytest.raises(ValidationError) as refused:
            translate.conversation(body(**bad))
        assert refused.value.field == field


def test_count_tokens_takes_a_budget_without_max_tokens() -> None:
    counted = msgspec.convert(
        {"messages": HI, "thinking": {"type": "enabled", "budget_tokens": 5000}}, w.CountTokensRequest
    )
    assert translate.conversation(counted).thinking == ThinkingChoice(budget=5000)


def test_thinking_blocks_sent_back_become_the_turns_thought_and_redacted_ones_are_dropped() -> None:
    history = [
        *HISTORY[:1],
        {
            "role": "assistant",
            "content": [
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
                *HISTORY[1]["content"],
            ],
        },
        HISTORY[2],
        {
            "role": "assistant",
            "content": [{"type": "redacted_thinking", "data": "x"}, {"type": "text", "text": "Hi"}],
        },
    ]
    turns = translate.conversation(body(messages=history, tools=[WEATHER])).turns
    assert [t.role for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[1].reasoning == THOUGHT and turns[1].tool_calls[0].name == "get_weather"
    assert turns[3].reasoning is None and turns[3].text == "Hi"


# -- the answer, pure ----------------------------------------------------------------------------


def test_a_stream_sends_the_thinking_block_first_then_its_signature_then_the_answer() -> None:
    s = MessageStream("claude", 30, Reply(None, thinking=True))
    tokens = [
        TokenEvent(THINK, "", reasoning=True),
        TokenEvent(1, "\nLet me", reasoning=True),
        TokenEvent(2, " think.\n", reasoning=True),
        TokenEvent(END_THINK, "", reasoning=True),
        TokenEvent(3, "\n\nHello"),
    ]
    got = streamed(s, tokens, finish("!"))
    kinds = [
        (f["type"], f.get("index"), (f.get("delta") or f.get("content_block") or {}).get("type")) for f in got
    ]
    assert kinds == [
        ("message_start", None, None),
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    assert got[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    thought = "".join(f["delta"]["thinking"] for f in got[2:4])
    assert thought == "Let me think."
    assert got[4]["delta"]["signature"] == signature(thought)
    assert "".join(f["delta"]["text"] for f in got[7:9]) == "Hello!"
    assert got[-2]["usage"]["output_tokens"] == 9  # the thought's tokens count, as Anthropic's do


def test_an_empty_thought_gives_no_thinking_block() -> None:
    """A thought closed at once (a budget of 0, or a template that cannot switch it off) is empty."""
    s = MessageStream("claude", 30, Reply(None, thinking=True))
    tokens = [TokenEvent(THINK, "", reasoning=True), TokenEvent(END_THINK, "\n", reasoning=True)]
    got = streamed(s, tokens, finish("Hi"))
    assert [f["content_block"]["type"] for f in got if f["type"] == "content_block_start"] == ["text"]
    result = Completion("Hi", (), finish(), reasoning="\n")
    assert [b["type"] for b in msgspec.to_builtins(message_of("c", result, Reply(None, True)).content)] == [
        "text"
    ]


def test_a_thought_omitted_keeps_its_block_and_signature_without_the_text() -> None:
    s = MessageStream("claude", 30, Reply(None, thinking=True), omit_thought=True)
    got = streamed(
        s, [TokenEvent(1, "secret", reasoning=True), TokenEvent(END_THINK, "", reasoning=True)], finish("Hi")
    )
    deltas = [f["delta"]["type"] for f in got if f["type"] == "content_block_delta"]
    assert deltas == ["signature_delta", "text_delta"]
    assert got[2]["delta"]["signature"] == signature("secret")
    result = Completion("Hi", (), finish(), reasoning="secret")
    m = msgspec.to_builtins(message_of("c", result, Reply(None, True), omit_thought=True))
    assert m["content"][0] == {"type": "thinking", "thinking": "", "signature": signature("secret")}


def test_a_thought_cut_by_max_tokens_is_the_only_block() -> None:
    s = MessageStream("claude", 30, Reply(None, thinking=True))
    got = streamed(s, [TokenEvent(1, "Hmm", reasoning=True)], finish("", FinishReason.LENGTH))
    assert [f["type"] for f in got][-4:] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert got[-2]["delta"]["stop_reason"] == "max_tokens"
    result = Completion("", (), finish("", FinishReason.LENGTH), reasoning="Hmm")
    m = msgspec.to_builtins(message_of("c", result, Reply(None, True)))
    assert m["content"] == [{"type": "thinking", "thinking": "Hmm", "signature": signature("Hmm")}]


def test_a_call_after_a_thought_is_the_next_block() -> None:
    tools = ToolPlan(ToolFormat.GENERIC, (Tool("f", None, {"type": "object"}),), required=True)
    s = MessageStream("claude", 30, Reply(tools, thinking=True))
    call = TokenEvent(2, '{"tool_calls": [{"name": "f", "arguments": {"a": 1}}]}')
    got = streamed(
        s,
        [TokenEvent(1, "Call f.", reasoning=True), TokenEvent(END_THINK, "", reasoning=True), call],
        finish(),
    )
    starts = [(f["index"], f["content_block"]["type"]) for f in got if f["type"] == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "tool_use")] and got[-2]["delta"]["stop_reason"] == "tool_use"
    result = Completion(call.text, (), finish(), reasoning="Call f.")
    m = msgspec.to_builtins(message_of("c", result, Reply(tools, True)))
    assert [b["type"] for b in m["content"]] == ["thinking", "tool_use"] and m["content"][1]["input"] == {
        "a": 1
    }


# -- over HTTP: DeepSeek-R1's template (the prompt opens the thought) ------------------------------

# ignore_eos (llama.cpp's extension): the answer after the thought is max_tokens' rest, whatever a
# tiny model would say, so that "a thought, then text" does not hang on what it says.
# (This SDK's create() has no ``temperature`` parameter any more: it goes in the body.)
GREEDY: Any = {"temperature": 0}
STEADY: Any = {"temperature": 0, "ignore_eos": True}
RAW_EVENTS = (
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
)


def test_a_message_has_the_thinking_block_then_text(r1_url: str) -> None:
    m = client(r1_url).messages.create(
        model="claude", max_tokens=20, messages=HI, extra_body=STEADY,
        thinking={"type": "enabled", "budget_tokens": 6},
    )  # fmt: skip
    assert [b.type for b in m.content] == ["thinking", "text"]
    thinking, text = m.content
    assert thinking.type == "thinking" and text.type == "text"
    assert thinking.thinking.strip() and thinking.signature == signature(thinking.thinking)
    assert "<think>" not in text.text and "</think>" not in text.text and text.text.strip()
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 20


def test_the_sdk_streams_the_thought_as_deltas_and_the_final_message_holds_both_blocks(r1_url: str) -> None:
    c = client(r1_url)
    ask: Any = dict(model="claude", max_tokens=20, messages=HI, extra_body=STEADY)
    ask["thinking"] = {"type": "enabled", "budget_tokens": 6}
    with c.messages.stream(**ask) as stream:
        events = [e for e in stream if e.type in RAW_EVENTS]  # the SDK's own "text", "thinking"... aside
        final = stream.get_final_message()
    shape = [
        (e.type, getattr(e, "index", None), getattr(getattr(e, "delta", None), "type", None)) for e in events
    ]
    n_thought = sum(1 for k in shape if k[2] == "thinking_delta")
    n_text = sum(1 for k in shape if k[2] == "text_delta")
    assert n_thought >= 1 and n_text >= 1
    assert shape == [
        ("message_start", None, None),
        ("content_block_start", 0, None),
        *[("content_block_delta", 0, "thinking_delta")] * n_thought,
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, None),
        *[("content_block_delta", 1, "text_delta")] * n_text,
        ("content_block_stop", 1, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    thought = "".join(e.delta.thinking for e in events[2 : 2 + n_thought])  # type: ignore[union-attr]
    assert [b.type for b in final.content] == ["thinking", "text"]
    block = final.content[0]
    assert block.type == "thinking" and block.thinking == thought and block.signature == signature(thought)
    # Greedy: the same thought and answer as the message not streamed.
    whole = c.messages.create(**ask)
    fields = {"type", "thinking", "signature", "text"}
    assert [b.model_dump(include=fields) for b in whole.content] == [
        b.model_dump(include=fields) for b in final.content
    ]


def test_thinking_off_or_absent_closes_the_thought_in_the_prompt(r1_url: str) -> None:
    """This template reads ``enable_thinking``: off, it renders ``</think>`` after the opening, so no
    thought comes (not even an empty block)."""
    c = client(r1_url)
    for thinking in ({"type": "disabled"}, None):
        extra: Any = {} if thinking is None else {"thinking": thinking}
        m = c.messages.create(model="claude", max_tokens=8, messages=HI, extra_body=GREEDY, **extra)
        assert [b.type for b in m.content] == ["text"]
    on = c.messages.count_tokens(model="claude", messages=HI, thinking={"type": "adaptive"})
    off = c.messages.count_tokens(model="claude", messages=HI, thinking={"type": "disabled"})
    assert off.input_tokens == on.input_tokens + 1  # the closing marker, a token of its own


def test_a_budget_not_below_max_tokens_is_a_bad_request(r1_url: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client(r1_url).messages.create(
            model="claude", max_tokens=16, messages=HI, thinking={"type": "enabled", "budget_tokens": 16}
        )
    assert refused.value.status_code == 400
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "thinking.budget_tokens" in str(refused.value)


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_a_tool_use_after_the_thought(r1_url: str, choice: Any) -> None:
    """DeepSeek-R1's template knows no tools this server can read (the generic JSON format): the
    grammar holding the answer to a call starts once the thought is closed. Anthropic refuses forced
    tool use with thinking; a local server need not."""
    c = client(r1_url)
    ask: Any = dict(
        model="claude", max_tokens=80, messages=ASK, tools=[WEATHER], tool_choice=choice, extra_body=GREEDY
    )
    ask["thinking"] = {"type": "enabled", "budget_tokens": 8}
    m = c.messages.create(**ask)
    assert [b.type for b in m.content] == ["thinking", "tool_use"] and m.stop_reason == "tool_use"
    call = m.content[1]
    assert call.type == "tool_use" and call.name == "get_weather" and isinstance(call.input, dict)
    assert isinstance(call.input.get("city"), str) and call.id.startswith("toolu_")
    with c.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "tool_use"] and final.stop_reason == "tool_use"
    assert final.content[0] == m.content[0]


def test_a_history_with_thinking_and_redacted_thinking_blocks_is_taken(r1_url: str) -> None:
    earlier = [
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
        {"type": "thinking", "thinking": "A greeting.", "signature": signature("A greeting.")},
        {"type": "text", "text": "Hello!"},
    ]
    history: Any = [*HI, {"role": "assistant", "content": earlier}, {"role": "user", "content": "Again."}]
    c = client(r1_url)
    ask: Any = dict(model="claude", messages=history, thinking={"type": "enabled", "budget_tokens": 4})
    # greedy: at Anthropic's default temperature of 1 this model's 4-token thought is sometimes blank
    m = c.messages.create(max_tokens=12, extra_body=GREEDY, **ask)
    assert m.content[0].type == "thinking"
    counted = c.messages.count_tokens(**ask)
    assert counted.input_tokens == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)


# -- over HTTP: Qwen3's template (switched by enable_thinking; shows a turn's thought again) ------


def test_qwen3_thinking_off_renders_the_empty_thought_and_gives_no_thinking_block(qwen3_url: str) -> None:
    c = client(qwen3_url)
    m = c.messages.create(model="claude", max_tokens=8, messages=HI, thinking={"type": "disabled"})
    assert [b.type for b in m.content] == ["text"] and "<think>" not in m.content[0].text  # type: ignore[union-attr]
    off = c.messages.count_tokens(model="claude", messages=HI, thinking={"type": "disabled"})
    absent = c.messages.count_tokens(model="claude", messages=HI)
    on = c.messages.count_tokens(
        model="claude", messages=HI, thinking={"type": "enabled", "budget_tokens": 64}
    )
    assert off.input_tokens == absent.input_tokens > on.input_tokens  # "<think>\n\n</think>\n\n" added
    assert off.input_tokens == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)


def test_qwen3_is_shown_the_thought_of_the_turn_it_continues(qwen3_url: str) -> None:
    """Qwen3's template writes back the thought of an assistant turn after the last user query: the
    thinking block sent back reaches it; a redacted one adds nothing."""
    c = client(qwen3_url)
    ask: Any = dict(model="claude", tools=[WEATHER], thinking={"type": "adaptive"})
    bare: Any = [*HISTORY[:1], {"role": "assistant", "content": HISTORY[1]["content"][1:]}, HISTORY[2]]
    hidden: Any = {"type": "redacted_thinking", "data": "x"}
    redacted: Any = [bare[0], {"role": "assistant", "content": [hidden, *bare[1]["content"]]}, bare[2]]
    with_thought = c.messages.count_tokens(messages=HISTORY, **ask).input_tokens
    without = c.messages.count_tokens(messages=bare, **ask).input_tokens
    assert c.messages.count_tokens(messages=redacted, **ask).input_tokens == without
    assert with_thought > without + 5
    m = c.messages.create(max_tokens=8, messages=HISTORY, **ask)
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) == with_thought


# -- the default model: no thought, no change ------------------------------------------------------


def _normalized(raw: str) -> str:
    """A stream without what differs from one request to the next: ids, and how much of the prompt
    came from the cache."""
    raw = re.sub(r"msg_[0-9a-f]{24}", "msg_", raw)
    return re.sub(r'"usage":\{[^}]*\}', '"usage":{}', raw)


def test_a_model_without_thoughts_streams_the_same_bytes_whatever_thinking_says(base_url: str) -> None:
    ask: Any = {"model": "claude", "max_tokens": 12, "messages": HI, "stream": True, "temperature": 0}
    streams = []
    with httpx.Client(timeout=120) as h:
        for thinking in (None, {"type": "disabled"}, {"type": "enabled", "budget_tokens": 4}):
            sent = ask if thinking is None else {**ask, "thinking": thinking}
            with connect_sse(h, "POST", f"{base_url}/v1/messages", json=sent) as s:
                streams.append(_normalized(s.response.read().decode()))
    assert streams[0] == streams[1] == streams[2]
    assert "thinking" not in streams[0] and "signature" not in streams[0]
    assert (
        'data: {"index":0,"content_block":{"type":"text","text":""},"type":"content_block_start"}'
        in streams[0]
    )


def test_a_structured_answer_follows_the_thought(r1_url: str) -> None:
    schema: Any = {
        "type": "object",
        "properties": {"greeting": {"type": "string", "maxLength": 20}},
        "required": ["greeting"],
    }
    m = client(r1_url).messages.create(
        model="claude", max_tokens=60, messages=HI, extra_body=STEADY,
        thinking={"type": "enabled", "budget_tokens": 6},
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )  # fmt: skip
    assert [b.type for b in m.content] == ["thinking", "text"]
    text = m.content[1]
    assert text.type == "text" and isinstance(json.loads(text.text)["greeting"], str)
