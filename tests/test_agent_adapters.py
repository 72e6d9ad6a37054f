"""The Responses and Messages translators, pure: no HTTP and no model. Requests in, conversations
out (refusals naming the protocol's own field); engine events in, each protocol's events out in the
order its documentation gives."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from engine import Completion, FinishEvent, FinishReason, TokenEvent, ValidationError
from engine.types import Timing, Usage
from server.anthropic import translate as anthropic
from server.anthropic import wire as aw
from server.anthropic.events import MessageStream, message_of
from server.conversation.reply import Reply
from server.conversation.tool_formats import ToolFormat, ToolPlan
from server.conversation.types import Tool
from server.errors import NotFound, Problem, anthropic_body
from server.openai.responses import translate as responses
from server.openai.responses import wire as rw
from server.openai.responses.events import Echo, ResponseStream, failed_stream
from server.openai.responses.store import ResponseStore

TIMING = Timing(0.0, 0.1, 0.2)


def finish(text: str = "", reason: FinishReason = FinishReason.EOS, stop: str | None = None) -> FinishEvent:
    return FinishEvent(TokenEvent(7, text), reason, Usage(30, 4, cached_tokens=10), TIMING, stop)


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event line, data) of each SSE frame; the two must name the same type."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        head, data = block.split("\n", 1)
        assert head.startswith("event: ") and data.startswith("data: "), block
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == head.removeprefix("event: ")
        out.append((payload["type"], payload))
    return out


def responses_body(**fields: Any) -> rw.ResponsesRequest:
    return msgspec.convert({"input": "hi", **fields}, rw.ResponsesRequest)


# -- Responses: requests -------------------------------------------------------------------------


def test_responses_input_items_become_turns_with_parallel_calls_joined() -> None:
    body = responses_body(
        instructions="Be brief",
        input=[
            {"role": "developer", "content": "sys"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "reasoning", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "x"}],
            },
        ],
    )
    conv, kept = responses.conversation(body)
    roles = [t.role for t in conv.turns]
    assert roles == ["system", "system", "user", "assistant", "tool", "tool"]
    assert conv.turns[0].text == "Be brief" and kept[0].text == "sys"  # instructions are not kept
    assert [c.id for c in conv.turns[3].tool_calls] == ["c1", "c2"]
    assert conv.turns[3].tool_calls[0].arguments == {"a": 1}
    assert conv.turns[5].text == "x" and conv.fields.output == "text.format"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"truncation": "auto"}, "truncation"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": ""}, "input"),
    ],
)
def test_responses_refusals_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as refused:
        responses.conversation(responses_body(**fields))
    assert refused.value.field == param


def test_responses_accepts_what_codex_sends() -> None:
    body = responses_body(
        reasoning=None,
        include=[],
        store=False,
        metadata={"a": "b"},
        user="u",
        prompt_cache_key="k",
        service_tier="auto",
        truncation="disabled",
        parallel_tool_calls=False,
        tools=[{"type": "function", "name": "shell", "parameters": {"type": "object"}, "strict": False}],
        tool_choice="auto",
    )
    conv, _ = responses.conversation(body)
    assert conv.tool_choice.mode == "auto" and not conv.tool_choice.parallel
    assert (
        responses.conversation(
            responses_body(tool_choice={"type": "function", "name": "shell"}, tools=body.tools)
        )[0].tool_choice.name
        == "shell"
    )


def test_the_store_keeps_the_most_recently_used_and_says_why_an_id_is_unknown() -> None:
    store = ResponseStore(2)
    echo = Echo(responses_body(), "m", None)
    made = []
    for _ in range(3):
        r = Echo(responses_body(), "m", None).response("completed", [])
        made.append(r)
    store.put(made[0], ())
    store.put(made[1], ())
    store.get(made[0].id)  # used: now the most recent
    store.put(made[2], ())
    assert store.get(made[0].id).response is made[0]
    with pytest.raises(NotFound, match="evicted"):
        store.get(made[1].id)
    store.delete(made[0].id)
    with pytest.raises(NotFound):
        store.get(made[0].id)
    assert echo.response("in_progress", []).object == "response"


# -- Responses: events ---------------------------------------------------------------------------


def test_responses_stream_events_in_documented_order_with_consistent_ids() -> None:
    kept: list[rw.Response] = []
    s = ResponseStream(Echo(responses_body(), "m", None), Reply(None), kept.append)
    raw = b"".join(
        x
        for x in (s.token(TokenEvent(1, "Hel")), s.token(TokenEvent(2, "")), s.token(TokenEvent(3, "lo")))
        if x
    )
    raw += s.finish(finish("!"))
    got = events(raw)
    kinds = [k for k, _ in got]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for _, e in got] == list(range(len(got)))
    item_id = got[2][1]["item"]["id"]
    assert {e["item_id"] for _, e in got[3:9]} == {item_id}
    assert got[7][1]["text"] == "Hello!"
    final = got[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello!" and final["output"][0]["id"] == item_id
    assert final["usage"] == {
        "input_tokens": 30,
        "input_tokens_details": {"cached_tokens": 10},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 34,
    }
    assert kept[0].id == final["id"] == got[0][1]["response"]["id"]


def test_responses_stream_of_a_call_and_a_length_finish() -> None:
    tools = ToolPlan(ToolFormat.GENERIC, (Tool("f", None, {"type": "object"}),), required=True)
    s = ResponseStream(Echo(responses_body(), "m", None), Reply(tools))
    raw = s.token(TokenEvent(1, '{"tool_calls": [{"name": "f", "arguments": {"a": 1}}]}')) or b""
    raw += s.finish(finish())
    got = events(raw)
    kinds = [k for k, _ in got]
    assert kinds[2] == "response.output_item.added" and got[2][1]["item"]["type"] == "function_call"
    assert got[2][1]["item"]["arguments"] == ""
    assert "response.function_call_arguments.delta" in kinds
    args = "".join(e["delta"] for k, e in got if k == "response.function_call_arguments.delta")
    done = next(e for k, e in got if k == "response.output_item.done")["item"]
    assert json.loads(args) == json.loads(done["arguments"]) == {"a": 1}
    assert done["call_id"] == got[2][1]["item"]["call_id"] and kinds[-1] == "response.completed"

    cut = ResponseStream(Echo(responses_body(), "m", None), Reply(None))
    last = events((cut.token(TokenEvent(1, "a")) or b"") + cut.finish(finish("b", FinishReason.LENGTH)))[-1][
        1
    ]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failure_is_response_failed_and_a_too_long_prompt_says_context_length_exceeded() -> None:
    s = ResponseStream(Echo(responses_body(), "m", None), Reply(None))
    s.token(TokenEvent(1, "a"))
    failed = events(s.error(Problem(500, "boom", "generation")))[-1][1]
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["code"] == "server_error"
    got = events(failed_stream(Echo(responses_body(), "m", None), "context_length_exceeded", "too long"))
    assert [k for k, _ in got] == ["response.created", "response.in_progress", "response.failed"]
    assert got[-1][1]["response"]["error"] == {"code": "context_length_exceeded", "message": "too long"}


# -- Messages --------------------------------------------------------------------------------------


def messages_body(**fields: Any) -> aw.MessagesRequest:
    return msgspec.convert(
        {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **fields}, aw.MessagesRequest
    )


def test_messages_blocks_become_turns() -> None:
    body = messages_body(
        system=[
            {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "B"},
        ],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "sunny"}],
                    },
                    {"type": "text", "text": "thanks"},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x", "is_error": True}
                ],
            },
            {"role": "system", "content": [{"type": "text", "text": "Be careful."}]},
        ],
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    conv = anthropic.conversation(body)
    assert [t.role for t in conv.turns] == ["system", "user", "assistant", "tool", "user", "tool", "system"]
    assert conv.turns[0].text == "A\n\nB"
    assert conv.turns[2].text == "Let me look." and conv.turns[2].tool_calls[0].arguments == {"a": 1}
    assert conv.turns[3].tool_call_id == "toolu_1" and conv.turns[5].text == "Error: x"
    assert conv.tool_choice.mode == "required" and not conv.tool_choice.parallel


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_messages_refusals_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as refused:
        anthropic.conversation(messages_body(**fields))
    assert refused.value.field == param


def test_messages_stream_events_in_documented_order() -> None:
    s = MessageStream("claude", 30, Reply(None))
    raw = b"".join(x for x in (s.token(TokenEvent(1, "Hel")), s.token(TokenEvent(2, "lo"))) if x)
    raw += s.finish(finish(" wor", FinishReason.STOP_SEQUENCE, "ld"))
    got = events(raw)
    assert [k for k, _ in got] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = got[0][1]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] == 30 and start["id"].startswith("msg_")
    assert "".join(e["delta"]["text"] for k, e in got if k == "content_block_delta") == "Hello wor"
    delta = got[-2][1]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "ld"}
    assert delta["usage"] == {
        "input_tokens": 20,
        "output_tokens": 4,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 10,
    }


def test_messages_stream_of_a_call_has_input_json_deltas_and_a_toolu_id() -> None:
    tools = ToolPlan(ToolFormat.GENERIC, (Tool("f", None, {"type": "object"}),), required=True)
    s = MessageStream("claude", 30, Reply(tools))
    raw = (
        s.token(TokenEvent(1, '{"tool_calls": [{"name": "f", "arguments": {"a": 1}}]}')) or b""
    ) + s.finish(finish())
    got = events(raw)
    start = next(e for k, e in got if k == "content_block_start")
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["id"].startswith("toolu_")
    assert start["content_block"]["input"] == {} and start["index"] == 0
    fragments = [e["delta"] for k, e in got if k == "content_block_delta"]
    assert all(f["type"] == "input_json_delta" for f in fragments)
    assert json.loads("".join(f["partial_json"] for f in fragments)) == {"a": 1}
    assert got[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_messages_whole_answer_and_error_shape() -> None:
    result = Completion("Hi", (TokenEvent(1, "Hi"),), finish("", FinishReason.LENGTH))
    m = msgspec.to_builtins(message_of("claude", result, Reply(None)))
    assert m["content"] == [{"text": "Hi", "type": "text"}] and m["stop_reason"] == "max_tokens"
    assert m["usage"]["cache_read_input_tokens"] == 10 and m["usage"]["input_tokens"] == 20
    for kind, name in [
        ("generation", "api_error"),
        ("overloaded", "overloaded_error"),
        ("payload", "request_too_large"),
        ("not_found", "not_found_error"),
        ("authentication", "authentication_error"),
        ("validation", "invalid_request_error"),
    ]:
        assert anthropic_body(Problem(500, "m", kind)) == {
            "type": "error",
            "error": {"type": name, "message": "m"},
        }


def test_a_vacuous_property_names_keyword_is_dropped_and_nothing_else() -> None:
    schema = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "propertyNames": {"type": "string"}},
            "tags": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}},
        },
    }
    body = messages_body(tools=[{"name": "f", "input_schema": schema}])
    (tool,) = anthropic.conversation(body).tools
    assert tool.parameters["properties"]["metadata"] == {"type": "object"}
    assert tool.parameters["properties"]["tags"] == schema["properties"]["tags"]  # type: ignore[index]
