"""Tool calls on a real tool-calling model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), served with its own
chat template, whose ``<tool_call>`` and ``</tool_call>`` are tokens of their own (151657/151658).

Over HTTP with the clients people use (the openai SDK, langchain-openai, the openai-agents SDK), plus
the grammar and the engine on its real vocabulary. Where the 0.5B model's own ability is the limit (it
may call a tool again after its result), the tests assert what the server owns: well-formed calls of
declared tools whose arguments validate, OpenAI's delta shape, a clear answer, never a 500.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from bench.server import running_server
from engine import Constraint, Engine, EngineConfig, GenerationError, GenerationRequest, SamplingParams
from engine.chat import ChatTemplate
from engine.constraint import Grammars
from engine.llama import Model
from models import QWEN_CODER, ensure_model
from server.conversation.plan import plan
from server.conversation.tool_formats import (
    MARKERS,
    ModelTools,
    ToolFormat,
    ToolPlan,
    constraint,
    model_tools,
)
from server.conversation.types import Tool
from server.openai.conversation import conversation
from server.openai.wire import ChatCompletionRequest
from tests import model_variants
from tests.test_tools import ASK, SCHEMAS, TIME_CHOICE, TOOLS, get_weather, reassemble, sdk


@pytest.fixture(scope="module")
def qwen_path() -> str:
    return str(ensure_model(QWEN_CODER, quiet=True))


@pytest.fixture(scope="module")
def qwen_url(qwen_path: str) -> Iterator[str]:
    with running_server(qwen_path, ["--threads", "2", "--parallel", "2"]) as url:
        yield url


def create(url: str, **fields: Any) -> Any:
    request: dict[str, Any] = {"model": "any", "messages": ASK, "tools": TOOLS, "temperature": 0}
    return sdk(url).chat.completions.create(**{**request, "max_tokens": 120, **fields})


def valid_calls(calls: list[tuple[str, str]]) -> None:
    assert calls
    for name, arguments in calls:
        assert name in SCHEMAS
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


# -- the model's markers, the grammar on its vocabulary ------------------------------------------------


@pytest.fixture(scope="module")
def qwen_grammars(qwen_path: str) -> Iterator[tuple[Grammars, Model]]:
    model = Model(Path(qwen_path))
    try:
        yield Grammars(model), model
    finally:
        model.close()


def test_the_markers_are_the_models_own_tokens(qwen_grammars: tuple[Grammars, Model]) -> None:
    grammars, model = qwen_grammars
    tools = model_tools(model.metadata("tokenizer.chat_template") or "", grammars.special_token)
    assert tools.format is ToolFormat.HERMES
    assert tools.special == {"<tool_call>": 151657, "</tool_call>": 151658}
    assert tools.describe() == "hermes, markers are tokens 151657/151658"


CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
QWEN_CASES = [  # required, text, accepted
    (True, f"<tool_call>\n{CALL}\n</tool_call>\n", True),
    (True, f"<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{CALL}\n</tool_call>", True),
    (True, f"{CALL}", False),
    (False, "Hello! How can I help?", True),
    (False, f"Let me check.<tool_call>\n{CALL}\n</tool_call>", True),
    (
        False,
        '```json\n{\n  "name": "get_weather",\n  "arguments": {"city": "Paris", "unit": "celsius"}\n}\n```',
        True,
    ),
    (False, f"{CALL}\n{CALL}", True),
    (False, '{"name": "get_weather", "arguments": {"city": 3}}', False),  # a begun call follows its schema
    (False, '{"name": "add_numbers", "arguments": {"a": 1}}', True),  # not a declared tool: text
    (False, '{"city": "Paris"}', True),
]


@pytest.mark.parametrize(("required", "text", "accepted"), QWEN_CASES)
def test_grammars_take_what_qwen_writes(
    qwen_grammars: tuple[Grammars, Model], required: bool, text: str, accepted: bool
) -> None:
    grammars, model = qwen_grammars
    markers = {m: t for m in MARKERS[ToolFormat.HERMES] if (t := grammars.special_token(m)) is not None}
    specs = tuple(Tool(t["function"]["name"], None, t["function"]["parameters"]) for t in TOOLS)
    plan = ToolPlan(ToolFormat.HERMES, specs, required=required)
    matcher = grammars.compile(constraint(plan, ModelTools(ToolFormat.HERMES, markers)))
    tokens = model.tokenize(text, add_special=False)  # <tool_call> becomes token 151657, as generated
    assert (bool(matcher.consume_tokens(tokens)) and bool(matcher.is_accepting())) is accepted


def run_engine(path: str, grammar: str, max_tokens: int = 12) -> str:
    async def scenario() -> str:
        engine = Engine(EngineConfig(model_path=path, n_ctx=1024, n_parallel=1, n_threads=2))
        engine.start()
        try:
            prompt = tuple(engine.tokenize("Call a tool.", add_special=False))
            request = GenerationRequest(
                prompt,
                max_tokens,
                SamplingParams(temperature=0),
                constraint=Constraint("lark", grammar, "grammar"),
                special_text=True,
            )
            return (await engine.submit(request).collect()).text
        finally:
            engine.close()

    return asyncio.run(scenario())


def test_a_marker_spelled_as_text_in_a_grammar_is_written_not_refused(qwen_path: str) -> None:
    # llguidance's mask offers token 151657 where a grammar forces the text "<tool_call>", then its
    # matcher refuses that token (this was the HTTP 500 of every forced call). The engine now bans it
    # and spells the forced text with ordinary tokens.
    assert run_engine(qwen_path, 'start: "<tool_call>" "\\n" /[a-z]+/').startswith("<tool_call>\n")


def test_a_grammar_that_takes_no_token_fails_its_request_clearly(qwen_path: str) -> None:
    # The grammar wants <|endoftext|> (an end-of-generation token) in the middle: no token can go on.
    with pytest.raises(GenerationError, match="`grammar` cannot go on"):
        run_engine(qwen_path, 'start: "a" <[151643]> "b"')


# -- over HTTP with the openai SDK ---------------------------------------------------------------------


def test_required_and_named_calls_whole_and_streamed(qwen_url: str) -> None:
    for choice, names in (("required", set(SCHEMAS)), (TIME_CHOICE, {"get_time"})):
        reply = create(qwen_url, tool_choice=choice)
        message = reply.choices[0].message
        assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
        calls = [(c.function.name, c.function.arguments) for c in message.tool_calls]
        valid_calls(calls)
        assert {name for name, _ in calls} <= names
        chunks = list(create(qwen_url, tool_choice=choice, stream=True))
        streamed, content, reason = reassemble(chunks)
        assert reason == "tool_calls" and content == ""
        assert [(c["name"], c["arguments"]) for c in streamed.values()] == calls  # greedy: the same calls


def test_parallel_calls_off_means_one_call(qwen_url: str) -> None:
    reply = create(qwen_url, tool_choice="required", parallel_tool_calls=False)
    assert len(reply.choices[0].message.tool_calls) == 1


def test_auto_calls_a_tool_when_the_question_needs_one(qwen_url: str) -> None:
    # Qwen2.5-Coder-0.5B answers this with a bare, fenced {"name": ..., "arguments": ...} object, not
    # its <tool_call> markers: the grammar holds it to the schema once it has begun, the parser
    # makes it a call.
    reply = create(qwen_url, messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    valid_calls([(c.function.name, c.function.arguments) for c in message.tool_calls])
    chunks = list(
        create(qwen_url, messages=[{"role": "user", "content": "What is the weather in Paris?"}], stream=True)
    )
    streamed, _, reason = reassemble(chunks)
    assert reason == "tool_calls"
    valid_calls([(c["name"], c["arguments"]) for c in streamed.values()])


def test_auto_answers_in_text_when_no_tool_is_needed(qwen_url: str) -> None:
    reply = create(qwen_url, messages=[{"role": "user", "content": "Hello! Who are you?"}])
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "stop" and not message.tool_calls
    assert message.content and not message.content.lstrip().startswith("{")


ROUND_TRIP: list[Any] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 degrees"},
]


def test_the_round_trip_renders_as_qwen_expects_and_answers_well_formed(
    qwen_url: str, qwen_grammars: tuple[Grammars, Model]
) -> None:
    grammars, model = qwen_grammars
    template = ChatTemplate(model.metadata("tokenizer.chat_template"), "", "<|im_end|>")
    body = msgspec.convert({"messages": ROUND_TRIP, "tools": TOOLS}, ChatCompletionRequest)
    chat = plan(conversation(body), model_tools(template.source, grammars.special_token))
    rendered = template.render(chat.messages, tools=chat.template_tools)
    # The call in its markers, the result in a user turn's <tool_response>, the tools in the system turn.
    assert f"<tool_call>\n{CALL}\n</tool_call>" in rendered
    assert "<tool_response>\nsunny, 21 degrees\n</tool_response>" in rendered
    assert '"name": "get_time"' in rendered
    reply = create(qwen_url, messages=ROUND_TRIP, max_tokens=60)
    # The 0.5B model may answer or call again: either way a well-formed answer.
    assert reply.choices[0].finish_reason in ("stop", "tool_calls", "length")
    for c in reply.choices[0].message.tool_calls or ():
        assert c.function.name in SCHEMAS


# -- real clients ----------------------------------------------------------------------------------------


def test_langchain_bind_tools(qwen_url: str) -> None:
    llm = ChatOpenAI(
        base_url=f"{qwen_url}/v1",
        api_key=SecretStr("unused"),
        model="any",
        temperature=0,
        max_completion_tokens=120,
    )
    for choice in ("get_weather", "auto"):
        reply = llm.bind_tools([get_weather], tool_choice=choice).invoke("What is the weather in Paris?")
        assert isinstance(reply, AIMessage) and reply.tool_calls, choice
        assert reply.tool_calls[0]["name"] == "get_weather" and set(reply.tool_calls[0]["args"]) == {
            "city",
            "unit",
        }


def test_the_openai_agents_sdk_runs_the_tool(qwen_url: str) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    ran: list[str] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"sunny and 21 degrees in {city}"

    model = OpenAIChatCompletionsModel("any", AsyncOpenAI(base_url=f"{qwen_url}/v1", api_key="unused"))
    agent = Agent(
        name="forecaster",
        instructions="Answer weather questions with the weather tool.",
        model=model,
        tools=[weather],
        model_settings=ModelSettings(temperature=0, max_tokens=80, tool_choice="auto"),
    )

    async def run() -> Any:
        # The 0.5B model may keep calling the tool after its result: a few turns are enough to see it run.
        return await Runner.run(agent, "What is the weather in Paris?", max_turns=3)

    try:
        asyncio.run(run())
    except Exception as exc:  # MaxTurnsExceeded: the model called again; the tool still ran
        assert type(exc).__name__ == "MaxTurnsExceeded", exc
    assert ran and "Paris" in ran[0]


# -- a thought before the call, on the real model ------------------------------------------------------

# Qwen2.5's vocabulary pads its ids up to 151935; Qwen3 made 151667/151668 its <think> and </think>.
# Renamed so, under Qwen3's template, the real tool model has Qwen3's markers at Qwen3's ids.
QWEN3_THINK = {151667: "<think>", 151668: "</think>"}


@pytest.fixture(scope="module")
def qwen3_ids_url(qwen_path: str) -> Iterator[str]:
    template = (model_variants.TEMPLATES / "qwen3.jinja").read_text()
    model = model_variants.with_tokens(Path(qwen_path), QWEN3_THINK, template, "qwen3-ids")
    with running_server(str(model), ["--threads", "2", "--parallel", "1", "--reasoning-budget", "8"]) as url:
        yield url


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_call_follows_a_thought_on_the_real_model(qwen3_ids_url: str, stream: bool) -> None:
    fields: dict[str, Any] = {"tool_choice": "required", "logit_bias": {"151667": 100}, "max_tokens": 80}
    if stream:
        chunks = list(create(qwen3_ids_url, stream=True, **fields))
        thought = "".join(
            getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
        )
        rebuilt, _, reason = reassemble(chunks)
        assert reason == "tool_calls"
        calls = [(c["name"], c["arguments"]) for c in rebuilt.values()]
    else:
        message = create(qwen3_ids_url, **fields).choices[0].message
        thought = message.reasoning_content
        calls = [(c.function.name, c.function.arguments) for c in message.tool_calls]
    assert thought == "<think>" * 8  # the model opened it (steered), the budget closed it
    valid_calls(calls)
    auto = create(qwen3_ids_url).choices[0].message  # unsteered: Qwen2.5 does not think, and calls
    assert getattr(auto, "reasoning_content", None) is None
    valid_calls([(c.function.name, c.function.arguments) for c in auto.tool_calls or ()])
