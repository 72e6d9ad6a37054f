"""Protocol adapters are pure: wire requests in, engine requests out; engine events in, SSE frames out."""

from __future__ import annotations

import json

import msgspec
import pytest

from engine import FinishEvent, FinishReason, TokenEvent, Usage, ValidationError
from engine.types import Timing
from server.openai import adapter as openai_adapter
from server.openai import wire as ow
from server.openai.conversation import turns
from server.state import Limits
from server.tgi import adapter as tgi_adapter
from server.tgi import wire as tw

LIMITS = Limits(max_input_tokens=99, max_total_tokens=100, max_stop_sequences=2)


def _no_tail(text: str, n: int) -> list[int]:
    raise AssertionError("only `truncate` asks for the last tokens of an input")


TIMING = Timing(0.0, 0.1, 0.5)


def frames(data: bytes) -> list[object]:
    events = [e for e in data.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def finish(text: str, reason: FinishReason = FinishReason.LENGTH) -> FinishEvent:
    return FinishEvent(TokenEvent(7, text), reason, Usage(3, 2), TIMING)


def test_chat_stream_role_first_finish_reason_usage_and_done() -> None:
    stream = openai_adapter.ChatStream("m", include_usage=True, logprobs=False)
    first = stream.token(TokenEvent(5, "Hel"))
    assert stream.token(TokenEvent(6, "")) is None  # nothing visible yet: no frame
    out = frames((first or b"") + stream.finish(finish("lo", FinishReason.EOS)))
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}  # type: ignore[index]
    assert out[1]["choices"][0]["delta"] == {"content": "lo"}  # type: ignore[index]
    assert out[2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}  # type: ignore[index]
    assert out[3]["choices"] == [] and out[3]["usage"]["total_tokens"] == 5  # type: ignore[index]
    assert out[4] == "[DONE]"
    assert {f["object"] for f in out[:4]} == {"chat.completion.chunk"}  # type: ignore[index]
    assert len({f["id"] for f in out[:4]}) == 1  # type: ignore[index]


def test_chat_request_resolves_defaults_and_refuses_what_cannot_fit() -> None:
    body = msgspec.json.decode(
        b'{"messages":[{"role":"user","content":"hi"}],"temperature":0}', type=ow.ChatCompletionRequest
    )
    request = openai_adapter.chat_request(body, [1, 2, 3], LIMITS)
    assert request.max_tokens == 97 and request.sampling.greedy and request.stop == ()
    body.max_tokens = 98
    with pytest.raises(ValidationError) as refused:
        openai_adapter.chat_request(body, [1, 2, 3], LIMITS)
    assert refused.value.field == "max_tokens"
    body.max_tokens, body.stop = 5, ["a", "b", "c"]
    with pytest.raises(ValidationError) as stops:
        openai_adapter.chat_request(body, [1, 2, 3], LIMITS)
    assert stops.value.field == "stop"


def test_chat_messages_flatten_text_parts_and_refuse_empty_content() -> None:
    body = msgspec.json.decode(
        b'{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}',
        type=ow.ChatCompletionRequest,
    )
    assert turns(body)[0].text == "ab"
    body = msgspec.json.decode(b'{"messages":[{"role":"user","content":""}]}', type=ow.ChatCompletionRequest)
    with pytest.raises(ValidationError):
        turns(body)


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"temperature": 0}, "temperature"),
        ({"top_p": 1.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"repetition_penalty": -1}, "repetition_penalty"),
        ({"stop": ["a", "b", "c"]}, "stop"),
        ({"best_of": 2}, "best_of"),
        ({"typical_p": 1.5}, "typical_p"),
        ({"top_n_tokens": 50}, "top_n_tokens"),
        ({"max_new_tokens": 98}, "max_new_tokens"),
    ],
)
def test_tgi_validation_names_the_field(parameters: dict[str, object], field: str) -> None:
    body = msgspec.convert({"inputs": "abc", "parameters": parameters}, tw.GenerateRequest)
    with pytest.raises(ValidationError) as refused:
        tgi_adapter.generation_request(body, lambda text: [1, 2, 3], _no_tail, LIMITS)
    assert refused.value.field == field
    assert str(refused.value).startswith("Input validation error: ")
    assert f"`{field}`" in str(refused.value)


def test_tgi_do_sample_false_is_greedy_unless_a_warper_is_set() -> None:
    greedy = msgspec.convert({"inputs": "x"}, tw.GenerateRequest)
    assert tgi_adapter.generation_request(greedy, lambda t: [1], _no_tail, LIMITS).sampling.greedy
    warped = msgspec.convert({"inputs": "x", "parameters": {"temperature": 0.7}}, tw.GenerateRequest)
    assert not tgi_adapter.generation_request(warped, lambda t: [1], _no_tail, LIMITS).sampling.greedy


def test_tgi_stream_marks_only_the_last_event_with_generated_text() -> None:
    body = msgspec.convert({"inputs": "Q:", "parameters": {"details": True}}, tw.GenerateRequest)
    request = tgi_adapter.generation_request(body, lambda t: [1, 2], _no_tail, LIMITS)
    stream = tgi_adapter.TgiStream(request, body.inputs, body.parameters)
    out = frames(stream.token(TokenEvent(5, "A", -0.5)) + stream.finish(finish("B")))
    assert out[0] == {
        "index": 1,
        "token": {"id": 5, "text": "A", "logprob": -0.5, "special": False},
        "generated_text": None,
        "details": None,
        "top_tokens": None,
    }
    assert out[1]["generated_text"] == "AB" and out[1]["index"] == 2  # type: ignore[index]
    assert out[1]["details"] == {  # type: ignore[index]
        "finish_reason": "length",
        "generated_tokens": 2,
        "seed": None,
        "input_length": 3,
    }
