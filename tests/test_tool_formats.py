"""Tool-call formats without HTTP: detection from real chat templates, prompts rendered by those
templates, grammars that llguidance compiles for the real model's vocabulary, and the incremental
parser fed every way a stream can split the text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine import Completion, FinishEvent, FinishReason, TokenEvent, Usage, ValidationError
from engine.chat import ChatTemplate
from engine.constraint import Grammars
from engine.llama import Model
from engine.types import Timing
from server.conversation.parser import ToolCallParser
from server.conversation.plan import ChatPlan, plan
from server.conversation.reply import Reply
from server.conversation.tool_formats import MARKERS, ModelTools, ToolFormat, ToolPlan, constraint, detect
from server.conversation.types import CallArguments, CallEnd, CallStart, Delta, Text, Tool
from server.openai import adapter as openai_adapter
from server.openai import wire as w
from server.openai.conversation import conversation
from server.tgi import adapter as tgi_adapter
from server.tgi import wire as tw

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
EXPECTED = {
    "qwen2.5-instruct.jinja": ToolFormat.HERMES,
    "hermes-2-pro-tool-use.jinja": ToolFormat.HERMES,
    "llama-3.2-instruct.jinja": ToolFormat.LLAMA3,
    "mistral-7b-instruct-v0.3.jinja": ToolFormat.MISTRAL,
    "smollm2-135m-instruct.jinja": ToolFormat.GENERIC,
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "the city"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "description": "Clock", "parameters": {}}},
]


def body(**fields: object) -> w.ChatCompletionRequest:
    raw = {"messages": [{"role": "user", "content": "Weather in Paris?"}], **fields}
    return msgspec.json.decode(json.dumps(raw), type=w.ChatCompletionRequest)


def text_markers(fmt: ToolFormat) -> ModelTools:
    """A model whose tool markers are ordinary text."""
    return ModelTools(fmt, {})


def plan_chat(request: w.ChatCompletionRequest, fmt: ToolFormat) -> ChatPlan:
    return plan(conversation(request), text_markers(fmt))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_format_is_detected_from_the_real_template(name: str) -> None:
    assert detect((TEMPLATES / name).read_text()) is EXPECTED[name]


ROUND_TRIP = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abcdefghijklmnopqrstuvwx",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_abcdefghijklmnopqrstuvwx", "content": "sunny, 21 C"},
]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_template_renders_tools_calls_and_results(name: str) -> None:
    template = ChatTemplate((TEMPLATES / name).read_text(), "<s>", "</s>")
    fmt = detect(template.source)
    plan = plan_chat(body(messages=ROUND_TRIP, tools=TOOLS), fmt)
    prompt = template.render(plan.messages, tools=plan.template_tools)
    assert "sunny, 21 C" in prompt and "Paris" in prompt
    assert "get_weather" in prompt and "get_time" in prompt  # the tools reach the model, natively or not
    if fmt is ToolFormat.GENERIC:
        assert (
            '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]}' in prompt
        )
        assert '"response"' in prompt  # auto: the system message offers a plain reply too
    if fmt is ToolFormat.MISTRAL:  # its template insists on 9-character ids: ours are mapped, paired
        call_ids = {prompt.split('"id": "')[1][:9], prompt.split('"call_id": "')[1][:9]}
        assert len(call_ids) == 1
    # Arguments reach templates as objects (they `tojson` them), not as doubly encoded strings.
    assert '\\"city\\"' not in prompt


@pytest.fixture(scope="module")
def grammars(model_path: str) -> Iterator[tuple[Grammars, Model]]:
    model = Model(Path(model_path))
    try:
        yield Grammars(model), model
    finally:
        model.close()


def accepts(grammars: tuple[Grammars, Model], plan: ToolPlan, text: str) -> bool:
    compiled, model = grammars
    markers = {m: t for m in MARKERS[plan.format] if (t := compiled.special_token(m)) is not None}
    matcher = compiled.compile(constraint(plan, ModelTools(plan.format, markers)))
    tokens = model.tokenize(text, add_special=False)
    return bool(matcher.consume_tokens(tokens)) and bool(matcher.is_accepting())


TOOL_SPECS = (Tool("get_weather", "Forecast", WEATHER), Tool("get_time", None, {"type": "object"}))
CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}'
GRAMMAR_CASES = [
    # format, required, named, parallel, text, accepted
    (ToolFormat.HERMES, True, None, True, f"<tool_call>\n{CALL}\n</tool_call>", True),
    (ToolFormat.HERMES, True, None, True, "Sure, here it is", False),
    (ToolFormat.HERMES, False, None, True, "Sure, here it is", True),
    (ToolFormat.HERMES, False, None, True, f"Let me check.<tool_call>\n{CALL}\n</tool_call>", True),
    (ToolFormat.HERMES, False, None, True, 'Hi<tool_call>\n{"name": "nope", "arguments": {}}', False),
    (
        ToolFormat.HERMES,
        True,
        None,
        True,
        f"<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{CALL}\n</tool_call>",
        True,
    ),
    (ToolFormat.HERMES, True, None, False, f"<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n", False),
    (ToolFormat.HERMES, True, "get_time", True, f"<tool_call>\n{CALL}\n</tool_call>", False),
    (
        ToolFormat.HERMES,
        True,
        None,
        True,
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": 1}}',
        False,
    ),
    (ToolFormat.LLAMA3, True, None, True, CALL.replace("arguments", "parameters"), True),
    (ToolFormat.LLAMA3, False, None, True, "It is sunny.", True),
    (ToolFormat.MISTRAL, True, None, True, f"[TOOL_CALLS] [{CALL}, {CALL}]", True),
    (ToolFormat.MISTRAL, False, None, True, "No call needed.", True),
    (ToolFormat.MISTRAL, True, None, False, f"[TOOL_CALLS] [{CALL}, {CALL}]", False),
    (ToolFormat.GENERIC, True, None, True, f'{{"tool_calls": [{CALL}, {CALL}]}}', True),
    (ToolFormat.GENERIC, True, None, False, f'{{"tool_calls": [{CALL}, {CALL}]}}', False),
    (ToolFormat.GENERIC, False, None, True, '{"response": "It is sunny."}', True),
    (ToolFormat.GENERIC, True, None, True, '{"response": "It is sunny."}', False),
    (
        ToolFormat.GENERIC,
        True,
        "get_time",
        True,
        '{"tool_calls": [{"name": "get_time", "arguments": {}}]}',
        True,
    ),
]


@pytest.mark.parametrize(("fmt", "required", "named", "parallel", "text", "accepted"), GRAMMAR_CASES)
def test_grammars_compile_for_the_real_vocabulary_and_hold_the_format(
    grammars: tuple[Grammars, Model],
    fmt: ToolFormat,
    required: bool,
    named: str | None,
    parallel: bool,
    text: str,
    accepted: bool,
) -> None:
    plan = ToolPlan(fmt, TOOL_SPECS, required=required, named=named, parallel=parallel)
    assert accepts(grammars, plan, text) is accepted


def test_a_tool_schema_llguidance_cannot_enforce_is_refused_naming_tools(
    grammars: tuple[Grammars, Model],
) -> None:
    bad = Tool("f", None, {"type": "object", "properties": {"x": {"type": "string", "pattern": "(?<=a)b"}}})
    with pytest.raises(ValidationError) as refused:
        grammars[0].compile(
            constraint(ToolPlan(ToolFormat.GENERIC, (bad,), required=True), text_markers(ToolFormat.GENERIC))
        )
    assert refused.value.field == "tools"


# -- the parser --------------------------------------------------------------------------------------


def splits(text: str) -> Iterator[list[str]]:
    """The text whole, one character at a time, and cut at every single position."""
    yield [text]
    yield list(text)
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]


def parse(fmt: ToolFormat, pieces: list[str]) -> tuple[list[Delta], ToolCallParser]:
    parser = ToolCallParser(fmt, frozenset({"f", "g", "get_weather"}))
    out: list[Delta] = []
    for piece in pieces:
        out += parser.push(piece)
    return out + parser.finish(), parser


def summary(deltas: list[Delta]) -> tuple[str, list[tuple[str, str]]]:
    content = "".join(d.text for d in deltas if isinstance(d, Text))
    calls: list[tuple[str, str]] = []
    for d in deltas:
        if isinstance(d, CallStart):
            assert d.index == len(calls) and d.id.startswith("call_")
            calls.append((d.name, ""))
        elif isinstance(d, CallArguments):
            assert d.index == len(calls) - 1  # fragments follow their call's start, in order
            calls[-1] = (calls[-1][0], calls[-1][1] + d.text)
    return content, calls


ARGS = '{"city": "Pa\\"ris}", "days": [1, {"a": 2}]}'
PARSE_CASES = [
    (
        ToolFormat.HERMES,
        f'Checking.<tool_call>\n{{"name": "f", "arguments": {ARGS}}}\n</tool_call>',
        "Checking.",
    ),
    (ToolFormat.HERMES, "Plain <tool text, no call", "Plain <tool text, no call"),
    (ToolFormat.LLAMA3, f'<|python_tag|>{{"name": "f", "parameters": {ARGS}}}', ""),
    (ToolFormat.LLAMA3, "It is {sunny}", "It is {sunny}"),
    (
        ToolFormat.MISTRAL,
        f'[TOOL_CALLS] [{{"name": "f", "arguments": {ARGS}}}, {{"name": "g", "arguments": {{}}}}]',
        "",
    ),
    (ToolFormat.GENERIC, f'{{"tool_calls": [{{"name": "f", "arguments": {ARGS}}}]}}', ""),
    (ToolFormat.GENERIC, '{"response": "caf\\u00e9 \\"ok\\"\\n\\ud83d\\ude00"}', 'café "ok"\n😀'),
]


@pytest.mark.parametrize(("fmt", "text", "content"), PARSE_CASES)
def test_the_parser_gives_the_same_content_and_calls_however_the_text_is_cut(
    fmt: ToolFormat, text: str, content: str
) -> None:
    results = {json.dumps(summary(parse(fmt, pieces)[0])) for pieces in splits(text)}
    assert len(results) == 1
    got_content, calls = json.loads(results.pop())
    assert got_content == content
    for name, arguments in calls:
        assert name in ("f", "g")
        json.loads(arguments)  # exactly the arguments object the model wrote
    if "name" in text and content == "":
        assert calls and calls[0][1] == (
            ARGS if fmt is not ToolFormat.MISTRAL or calls[0][0] == "f" else "{}"
        )


SHAPES = [  # what real models write in `auto`, beside their trained markers: (text, content, calls)
    (f'{{"name": "f", "arguments": {ARGS}}}', "", [("f", ARGS)]),
    (f'```json\n{{\n  "name": "f",\n  "arguments": {ARGS}\n}}\n```', "", [("f", ARGS)]),
    (
        '{"name": "f", "arguments": {}}\n{"name": "g", "arguments": {"a": 1}}',
        "",
        [("f", "{}"), ("g", '{"a": 1}')],
    ),
    (f'{{"name": "f", "parameters": {ARGS}}}', "", [("f", ARGS)]),
    ('{"name": "f", "arguments": "{\\"city\\": \\"Paris\\"}"}', "", [("f", '{"city": "Paris"}')]),
    ('<tool_call>\n{"name": "f", "arguments": {"x": 1}}', "", [("f", '{"x": 1}')]),  # never closed
    ('{"name": "zzz", "arguments": {}}', '{"name": "zzz", "arguments": {}}', []),  # not a declared tool
    ('{"city": "Paris"}', '{"city": "Paris"}', []),  # merely JSON
    ('```python\nprint("hi")\n```', '```python\nprint("hi")\n```', []),
]


@pytest.mark.parametrize(("text", "content", "calls"), SHAPES)
def test_the_shapes_real_models_write_become_calls_of_declared_tools_only(
    text: str, content: str, calls: list[tuple[str, str]]
) -> None:
    results = {json.dumps(summary(parse(ToolFormat.HERMES, pieces)[0])) for pieces in splits(text)}
    assert len(results) == 1, results
    assert json.loads(results.pop()) == [content, [list(c) for c in calls]]


def test_arguments_stream_as_they_are_generated_not_at_the_end() -> None:
    parser = ToolCallParser(ToolFormat.HERMES, frozenset({"get_weather"}))
    assert parser.push("<tool_call>\n") == []
    start = parser.push('{"name": "get_weather", "arguments": {"ci')
    assert isinstance(start[0], CallStart) and start[0].name == "get_weather"
    assert start[1:] == [CallArguments(0, '{"ci')]
    assert parser.push('ty": "Paris"') == [CallArguments(0, 'ty": "Paris"')]
    end = parser.push("}}\n</tool_call>")
    assert end == [CallArguments(0, "}"), CallEnd(0, start[0].id, "get_weather", '{"city": "Paris"}')]
    assert parser.finish() == []


def test_a_call_cut_by_max_tokens_keeps_what_was_generated() -> None:
    deltas, parser = parse(ToolFormat.GENERIC, ['{"tool_calls": [{"name": "f", "arguments": {"x": "ab'])
    assert summary(deltas) == ("", [("f", '{"x": "ab')])
    assert parser.called


# -- the OpenAI encoders and the TGI grammar, without a model ----------------------------------------


def frames(data: bytes) -> list[Any]:
    events = [e[6:] for e in data.decode().split("\n\n") if e]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def finish_event(text: str, reason: FinishReason = FinishReason.EOS) -> FinishEvent:
    return FinishEvent(TokenEvent(1, text), reason, Usage(3, 9), Timing(0.0, 0.1, 0.2))


def test_chat_stream_sends_each_call_id_and_name_once_then_fragments() -> None:
    reply = Reply(ToolPlan(ToolFormat.GENERIC, (Tool("f", None, {}), Tool("g", None, {})), required=False))
    stream = openai_adapter.ChatStream("m", include_usage=False, logprobs=False, reply=reply)
    data = b""
    for piece in [
        '{"tool_calls": [{"name": "f", "arg',
        'uments": {"x"',
        ": 1}}, ",
        '{"name": "g", "arguments": {}}',
    ]:
        data += stream.token(TokenEvent(0, piece)) or b""
    out = frames(data + stream.finish(finish_event("]}")))
    deltas = [f["choices"][0]["delta"] for f in out[:-2]]
    assert deltas[0]["role"] == "assistant"
    calls = [d["tool_calls"][0] for d in deltas]
    assert calls[0] == {
        "index": 0,
        "id": calls[0]["id"],
        "type": "function",
        "function": {"arguments": "", "name": "f"},
    }
    assert all(set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in calls[1:3])
    assert "".join(c["function"]["arguments"] for c in calls if c["index"] == 0) == '{"x": 1}'
    assert calls[3]["index"] == 1 and calls[3]["function"]["name"] == "g" and calls[3]["id"] != calls[0]["id"]
    assert out[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    assert out[-1] == "[DONE]"


def hermes_reply() -> Reply:
    return Reply(ToolPlan(ToolFormat.HERMES, (Tool("f", None, {}),), required=False))


def test_whole_answers_null_content_with_calls_and_no_tool_calls_key_without() -> None:
    text = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    called = openai_adapter.chat_completion(
        "m", Completion(text, (), finish_event("")), False, hermes_reply()
    )
    body = msgspec.json.decode(msgspec.json.encode(called))
    message = body["choices"][0]["message"]
    assert message["content"] is None and body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    plain = openai_adapter.chat_completion("m", Completion("Hi", (), finish_event("")), False, hermes_reply())
    message = msgspec.json.decode(msgspec.json.encode(plain))["choices"][0]["message"]
    assert message["content"] == "Hi" and "tool_calls" not in message
    cut = openai_adapter.chat_completion(
        "m", Completion(text[:30], (), finish_event("", FinishReason.LENGTH)), False, hermes_reply()
    )
    assert cut.choices[0].finish_reason == "length"  # a call cut by max_tokens is not a finished call


def test_tgi_grammar_types() -> None:
    schema = {"type": "object"}
    for grammar in (
        tw.Grammar("json", schema),
        tw.Grammar("json", json.dumps(schema)),
        tw.Grammar("json_schema", {"name": "x", "schema": schema}),
    ):
        c = tgi_adapter.grammar(grammar)
        assert c is not None and c.kind == "json_schema" and json.loads(c.source)["type"] == "object"
    regex = tgi_adapter.grammar(tw.Grammar("regex", "[0-9]+"))
    assert regex is not None and (regex.kind, regex.source, regex.field) == ("regex", "[0-9]+", "grammar")
    for bad in (tw.Grammar("lark", "start: /a/"), tw.Grammar("json", 5), tw.Grammar("regex", None)):
        with pytest.raises(ValidationError) as refused:
            tgi_adapter.grammar(bad)
        assert refused.value.field == "grammar"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_plans_refuse_what_cannot_be_honoured(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as refused:
        plan_chat(body(**fields), ToolFormat.HERMES)
    assert refused.value.field == param


def test_plans_resolve_choices() -> None:
    auto = plan_chat(body(tools=TOOLS), ToolFormat.HERMES)
    assert auto.tools is not None and not auto.tools.required and auto.special_text
    assert auto.template_tools is not None and auto.constraint is not None and auto.constraint.kind == "lark"
    none = plan_chat(
        body(tools=TOOLS, tool_choice="none", response_format={"type": "json_object"}),
        ToolFormat.HERMES,
    )
    assert none.tools is None and none.template_tools is None and none.constraint is not None
    assert none.constraint.field == "response_format"
    generic = plan_chat(body(tools=TOOLS, tool_choice="required"), ToolFormat.GENERIC)
    assert generic.messages[0].role == "system" and "get_weather" in generic.messages[0].content
    assert (
        generic.constraint is not None
        and generic.constraint.kind == "json_schema"
        and not generic.special_text
    )


def test_a_special_token_trigger_compiles_to_its_token_id(grammars: tuple[Grammars, Model]) -> None:
    # Mistral's [TOOL_CALLS] is one special token in its vocabulary; the models under test have none
    # such, so stand in their <|im_start|> to check the <[id]> path against a real vocabulary.
    compiled, model = grammars
    stand_in = compiled.special_token("<|im_start|>")
    if stand_in is None:
        pytest.skip("this model's vocabulary has no <|im_start|> token to stand in for [TOOL_CALLS]")
    for required, text, accepted in (
        (True, f"<|im_start|> [{CALL}]", True),
        (True, "[TOOL_CALLS] [", False),  # the same text, not the token
        (False, "A plain answer.", True),
        (False, f"<|im_start|>[{CALL}, {CALL}]", True),
    ):
        plan = ToolPlan(ToolFormat.MISTRAL, TOOL_SPECS, required=required)
        matcher = compiled.compile(
            constraint(plan, ModelTools(ToolFormat.MISTRAL, {"[TOOL_CALLS]": stand_in}))
        )
        tokens = model.tokenize(text, add_special=False)
        if accepted:
            assert matcher.consume_tokens(tokens) and matcher.is_accepting(), text
        else:
            assert not matcher.consume_tokens(tokens), text
