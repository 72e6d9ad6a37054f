"""A thinking model's thought on the Responses API: a ``reasoning`` item before the answer's items,
streamed as ``response.reasoning_text.*`` events; ``reasoning.effort`` and ``reasoning.summary``;
earlier thoughts sent back in ``input`` (as text or as ``encrypted_content``) or kept with a stored
response, reaching the chat template as the assistant turn's ``reasoning_content``.

The translators are tested pure first (no HTTP, no model); then the openai SDK talks to real servers
(tests/conftest.py): ``r1_url`` (the prompt opens the thought; the server closes it after 12 tokens)
and ``qwen3_url`` (the model opens it itself: steered with ``logit_bias`` on ``<think>``)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import openai
import pytest

from engine import Completion, FinishEvent, FinishReason, TokenEvent, ValidationError
from engine.types import Timing, Usage
from server.conversation.reply import Reply
from server.conversation.types import UNLIMITED
from server.openai.responses import translate
from server.openai.responses import wire as w
from server.openai.responses.events import Echo, ResponseStream, assistant_turn, response_of
from tests.conftest import END_THINK, THINK
from tests.helpers import typed_events
from tests.test_responses import WEATHER

TIMING = Timing(0.0, 0.1, 0.2)
OPEN_THOUGHT = {"logit_bias": {str(THINK): 100}}  # Qwen3's first token is <think>


def body(**fields: Any) -> w.ResponsesRequest:
    return msgspec.convert({"input": "hi", **fields}, w.ResponsesRequest)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


def thought_tokens() -> list[TokenEvent]:
    """A thought as the engine marks it: the markers show as empty text."""
    return [
        TokenEvent(THINK, "", reasoning=True),
        TokenEvent(1, "\nI think", reasoning=True),
        TokenEvent(2, " so.\n", reasoning=True),
        TokenEvent(END_THINK, "", reasoning=True),
    ]


def finish(token: TokenEvent, reason: FinishReason = FinishReason.EOS, reasoning: int = 4) -> FinishEvent:
    return FinishEvent(token, reason, Usage(30, 6, reasoning_tokens=reasoning), TIMING)


# -- requests --------------------------------------------------------------------------------------


def test_reasoning_items_become_the_thought_of_the_assistant_turn_after_them() -> None:
    ours = translate.encrypted("Paris needs a call.")
    conv, kept = translate.conversation(
        body(
            input=[
                {"role": "user", "content": "weather?"},
                {
                    "type": "reasoning",
                    "summary": [],
                    "content": [{"type": "reasoning_text", "text": "Call."}],
                },
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "reasoning", "summary": [], "encrypted_content": ours},
                {"type": "message", "role": "assistant", "content": "It is sunny."},
                {"role": "user", "content": "and tomorrow?"},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Guess."}]},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c2", "output": "rain"},
                {"type": "reasoning", "summary": [], "encrypted_content": "gAAAA-another-server's"},
                {"role": "assistant", "content": "Rain."},
                {
                    "type": "reasoning",
                    "summary": [],
                    "content": [{"type": "reasoning_text", "text": "Left."}],
                },
                {"role": "user", "content": "thanks"},
            ]
        )
    )
    assistant = [t for t in conv.turns if t.role == "assistant"]
    assert [t.reasoning for t in assistant] == ["Call.", "Paris needs a call.", "Guess.", None]
    assert all(t.reasoning is None for t in conv.turns if t.role != "assistant")  # "Left." has no answer
    assert kept == conv.turns


def test_a_thought_before_a_message_and_its_calls_stays_with_that_one_turn() -> None:
    conv, _ = translate.conversation(
        body(
            input=[
                {"role": "user", "content": "weather?"},
                {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "Ask."}]},
                {"role": "assistant", "content": "Let me look."},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            ]
        )
    )
    turn = conv.turns[-1]
    assert turn.text == "Let me look." and [c.id for c in turn.tool_calls] == ["c1"]
    assert turn.reasoning == "Ask."


@pytest.mark.parametrize(
    ("effort", "enabled", "budget"),
    [(None, True, None), ("none", False, None), ("minimal", True, 256), ("high", True, UNLIMITED)],
)
def test_reasoning_effort_is_the_conversations_thinking(
    effort: str | None, enabled: bool, budget: int
) -> None:
    conv, _ = translate.conversation(body(reasoning={"effort": effort, "summary": "auto"}))
    assert conv.thinking.enabled is enabled and conv.thinking.budget == budget


@pytest.mark.parametrize(
    ("reasoning", "field"),
    [
        ({"summary": "detailed"}, "reasoning.summary"),
        ({"summary": "concise"}, "reasoning.summary"),
        ({"generate_summary": "concise"}, "reasoning.generate_summary"),
        ({"effort": "extreme"}, "reasoning.effort"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(reasoning: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        translate.conversation(body(reasoning=reasoning))
    assert refused.value.field == field


def test_encrypted_content_is_the_thought_and_only_ours_is_read() -> None:
    assert translate.decrypted(translate.encrypted("ünïcode thought")) == "ünïcode thought"
    assert translate.decrypted("gAAAAABo-opaque") is None
    assert translate.decrypted(translate.THOUGHT_PREFIX + "%%%") is None


# -- the answer ------------------------------------------------------------------------------------


def test_a_streamed_thought_is_a_reasoning_item_before_the_message() -> None:
    kept: list[w.Response] = []
    echo = Echo(body(include=["reasoning.encrypted_content"]), "m", None)
    s = ResponseStream(echo, Reply(None, thinking=True), kept.append)
    raw = b"".join(s.token(t) or b"" for t in [*thought_tokens(), TokenEvent(3, "\n\nHel")])
    got = typed_events(raw + s.finish(finish(TokenEvent(4, "lo"))))
    kinds = [e["type"] for e in got]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    added, part = got[2], got[3]
    assert added["item"] == {"type": "reasoning", "id": added["item"]["id"], "content": [], "summary": [],
                             "status": "in_progress"}  # fmt: skip
    assert added["item"]["id"].startswith("rs_") and part["part"] == {"type": "reasoning_text", "text": ""}
    thought = "".join(e["delta"] for e in got if e["type"] == "response.reasoning_text.delta")
    assert thought == got[6]["text"] == "I think so."
    assert {e["item_id"] for e in got[3:8]} == {added["item"]["id"]}
    assert {e["output_index"] for e in got[2:9]} == {0} and {e["output_index"] for e in got[9:16]} == {1}
    done = got[8]["item"]
    assert done["content"] == [{"type": "reasoning_text", "text": "I think so."}]
    assert translate.decrypted(done["encrypted_content"]) == "I think so." and done["status"] == "completed"
    final = got[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["output"][0] == done and final["output"][1]["content"][0]["text"] == "Hello"
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 4}
    assert assistant_turn(kept[0].output).reasoning == "I think so."


def test_a_thought_and_an_answer_whole_match_the_stream() -> None:
    tokens = (*thought_tokens(), TokenEvent(3, "\n\nHello"))
    result = Completion("\n\nHello", tokens, finish(tokens[-1]), reasoning="\nI think so.\n")
    r = response_of(Echo(body(), "m", None), result, Reply(None, thinking=True))
    assert [type(o).__name__ for o in r.output] == ["ReasoningItem", "MessageItem"]
    item = r.output[0]
    assert isinstance(item, w.ReasoningItem) and item.content[0].text == "I think so."
    assert "encrypted_content" not in msgspec.to_builtins(item)  # not asked for
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 4


def test_a_thought_cut_by_max_output_tokens_is_incomplete_with_no_message() -> None:
    last = TokenEvent(5, " more", reasoning=True)
    cut = finish(last, FinishReason.LENGTH, reasoning=5)
    s = ResponseStream(Echo(body(), "m", None), Reply(None, thinking=True))
    raw = b"".join(s.token(t) or b"" for t in thought_tokens()[:2])
    streamed = typed_events(raw + s.finish(cut))[-1]["response"]
    result = Completion("", (*thought_tokens()[:2], last), cut, reasoning="\nI think more")
    whole = msgspec.to_builtins(response_of(Echo(body(), "m", None), result, Reply(None, thinking=True)))
    for r in (streamed, whole):
        assert r["status"] == "incomplete" and [o["type"] for o in r["output"]] == ["reasoning"]
        assert r["output"][0]["status"] == "incomplete"
        assert r["output"][0]["content"][0]["text"] == "I think more"


def test_no_thought_no_reasoning_item() -> None:
    s = ResponseStream(Echo(body(), "m", None), Reply(None, thinking=True))
    marker_only = [TokenEvent(END_THINK, "", reasoning=True), TokenEvent(3, "Hi")]
    got = typed_events(
        b"".join(s.token(t) or b"" for t in marker_only) + s.finish(finish(TokenEvent(4, "!"), reasoning=1))
    )
    assert not any("reasoning" in e["type"] for e in got)
    assert [o["type"] for o in got[-1]["response"]["output"]] == ["message"]


# -- over HTTP, with the openai SDK ------------------------------------------------------------------


def test_r1_answer_has_its_thought_first(r1_url: str) -> None:
    r = client(r1_url).responses.create(
        model="m", input="Say hello.", max_output_tokens=30, temperature=0, extra_body={"ignore_eos": True}
    )
    assert [o.type for o in r.output] == ["reasoning", "message"]
    thought, message = r.output
    assert thought.type == "reasoning" and thought.id.startswith("rs_") and thought.summary == []
    assert thought.status == "completed" and thought.content and thought.content[0].type == "reasoning_text"
    assert thought.content[0].text.strip() == thought.content[0].text != ""
    assert thought.encrypted_content is None
    assert message.type == "message" and r.output_text.strip()
    assert thought.content[0].text not in r.output_text
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 13  # 12 and </think>


def test_r1_stream_with_the_sdk_helper(r1_url: str) -> None:
    with client(r1_url).responses.stream(
        model="m", input="Say hello.", max_output_tokens=40, temperature=0
    ) as s:
        got = list(s)
        final = s.get_final_response()
    kinds = [e.type for e in got]
    first = kinds.index("response.reasoning_text.delta")
    assert kinds[:first] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    done = kinds.index("response.reasoning_text.done")
    assert set(kinds[first:done]) == {"response.reasoning_text.delta"}
    assert kinds[done + 1 : done + 3] == ["response.content_part.done", "response.output_item.done"]
    assert kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in got if e.type == "response.reasoning_text.delta")
    text_done = next(e for e in got if e.type == "response.reasoning_text.done")
    assert deltas == text_done.text != ""
    assert final.output[0].type == "reasoning" and final.output[0].content is not None
    assert final.output[0].content[0].text == deltas and final.output[0].id == text_done.item_id
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens > 0


def test_r1_raw_stream_thought_then_answer(r1_url: str) -> None:
    stream = client(r1_url).responses.create(
        model="m", input="Say hello.", max_output_tokens=30, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    got = list(stream)
    kinds = [e.type for e in got]
    assert kinds.index("response.output_item.done") < kinds.index("response.output_text.delta")
    answer = "".join(e.delta for e in got if e.type == "response.output_text.delta")
    final = got[-1]
    assert final.type == "response.incomplete"
    assert [o.type for o in final.response.output] == ["reasoning", "message"]
    assert final.response.output_text == answer != ""


def test_effort_none_gives_no_reasoning_item(r1_url: str, qwen3_url: str) -> None:
    # R1: the template closes the thought it opens; Qwen3: it writes an empty thought, so a <think>
    # the model writes anyway is only text of the answer.
    for url, extra in ((r1_url, {}), (qwen3_url, OPEN_THOUGHT)):
        r = client(url).responses.create(
            model="m", input="Say hello.", max_output_tokens=8, temperature=0, reasoning={"effort": "none"},
            extra_body=extra,
        )  # fmt: skip
        assert [o.type for o in r.output] == ["message"], url
        assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 0
        assert r.reasoning is not None and r.reasoning.effort == "none"
    assert "<think>" in r.output_text


def test_effort_sets_the_budget_and_a_cut_thought_is_incomplete(r1_url: str) -> None:
    r = client(r1_url).responses.create(
        model="m", input="Say hello.", max_output_tokens=20, temperature=0, reasoning={"effort": "minimal"}
    )  # 256 tokens of thought: past the server's 12, cut by max_output_tokens
    assert r.status == "incomplete" and [o.type for o in r.output] == ["reasoning"]
    item = r.output[0]
    assert item.type == "reasoning" and item.status == "incomplete"
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 20


def test_a_call_after_a_thought(qwen3_url: str) -> None:
    r = client(qwen3_url).responses.create(
        model="m", input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
        max_output_tokens=80, temperature=0, extra_body=OPEN_THOUGHT,
    )  # fmt: skip
    assert [o.type for o in r.output] == ["reasoning", "function_call"]
    call = r.output[1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens > 0


def test_a_streamed_call_after_a_thought(qwen3_url: str) -> None:
    with client(qwen3_url).responses.stream(
        model="m", input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
        max_output_tokens=80, temperature=0, extra_body=OPEN_THOUGHT,
    ) as s:  # fmt: skip
        got = list(s)
        final = s.get_final_response()
    added = [e.item.type for e in got if e.type == "response.output_item.added"]
    assert added == ["reasoning", "function_call"]
    assert [e.output_index for e in got if e.type == "response.output_item.added"] == [0, 1]
    assert [o.type for o in final.output] == ["reasoning", "function_call"]


@pytest.mark.parametrize(
    ("reasoning", "param"),
    [
        ({"summary": "detailed"}, "reasoning.summary"),
        ({"generate_summary": "concise"}, "reasoning.generate_summary"),
    ],
)
def test_a_summary_is_refused_naming_the_field(r1_url: str, reasoning: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(r1_url).responses.create(model="m", input="Say hello.", reasoning=reasoning)
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict) and body["param"] == param and "summar" in body["message"]


def test_summary_auto_is_accepted_and_the_summary_stays_empty(r1_url: str) -> None:
    r = client(r1_url).responses.create(
        model="m", input="Say hello.", max_output_tokens=20, temperature=0, reasoning={"summary": "auto"}
    )
    assert r.output[0].type == "reasoning" and r.output[0].summary == []


def _loop(call_id: str, thought: dict[str, Any] | None) -> list[Any]:
    """A tool-call loop: the thought (when given) before the call it led to."""
    items: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    if thought is not None:
        items.append({"type": "reasoning", "id": "rs_1", "summary": [], **thought})
    items.append({"type": "function_call", "call_id": call_id, "name": "get_weather",
                  "arguments": '{"city": "Paris"}'})  # fmt: skip
    items.append({"type": "function_call_output", "call_id": call_id, "output": "sunny"})
    return items


def test_a_thought_sent_back_reaches_the_template(qwen3_url: str) -> None:
    """Qwen3's template shows the thought of an assistant turn after the last user message (a
    tool-call loop): the prompt grows by it, whether sent as text, as encrypted_content, or kept
    with the stored response of previous_response_id."""
    c = client(qwen3_url)
    first = c.responses.create(
        model="m", input=_loop("x", None)[:1], tools=[WEATHER], tool_choice="required",
        max_output_tokens=80, temperature=0, include=["reasoning.encrypted_content"], extra_body=OPEN_THOUGHT,
    )  # fmt: skip
    item, call = first.output
    assert item.type == "reasoning" and call.type == "function_call" and item.content is not None
    assert item.encrypted_content is not None and item.content[0].text
    text = {"content": [{"type": "reasoning_text", "text": item.content[0].text}]}

    def prompt_tokens(**request: Any) -> int:
        r = c.responses.create(model="m", tools=[WEATHER], max_output_tokens=1, temperature=0, **request)
        assert r.usage is not None
        tokens: int = r.usage.input_tokens
        return tokens

    without = prompt_tokens(input=_loop(call.call_id, None))
    as_text = prompt_tokens(input=_loop(call.call_id, text))
    assert as_text > without
    assert prompt_tokens(input=_loop(call.call_id, {"encrypted_content": item.encrypted_content})) == as_text
    output = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    assert prompt_tokens(input=output, previous_response_id=first.id) == as_text


def test_a_thought_sent_back_to_r1_is_accepted(r1_url: str) -> None:
    c = client(r1_url)
    first = c.responses.create(
        model="m", input="Say hello.", max_output_tokens=30, temperature=0, store=False,
        include=["reasoning.encrypted_content"],
    )  # fmt: skip
    history: list[Any] = [o.model_dump(exclude_none=True) for o in first.output]
    r = c.responses.create(
        model="m", input=[{"role": "user", "content": "Say hello."}, *history,
                          {"role": "user", "content": "Again."}],
        max_output_tokens=20, temperature=0,
    )  # fmt: skip
    assert r.status in ("completed", "incomplete") and r.output[0].type == "reasoning"


def test_no_thinking_model_no_change(base_url: str) -> None:
    r = client(base_url).responses.create(
        model="m", input="Say hello.", max_output_tokens=8, temperature=0, reasoning={"effort": "low"}
    )
    assert [o.type for o in r.output] == ["message"]
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 0
    with client(base_url).responses.stream(model="m", input="Say hello.", max_output_tokens=8) as s:
        kinds = {e.type for e in s}
    assert not any("reasoning" in kind for kind in kinds)
