"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import time

from litestar import Response, Router, get, post
from litestar.response import Stream

from server import openai_adapter as adapt
from server import openai_wire as w
from server.generation import count_request, sse_response, stream, whole
from server.state import AnyRequest, Services, services
from server.tool_formats import detect
from server.tool_request import plan_chat


@post("/chat/completions", status_code=200, responses=sse_response(w.ChatCompletionChunk))
async def chat_completions(
    request: AnyRequest, data: w.ChatCompletionRequest
) -> Response[w.ChatCompletion] | Stream:
    """Chat completion; with ``stream: true``, ``chat.completion.chunk`` events over SSE."""
    s, body = services(request), data
    count_request(request, s.metrics)
    template = s.engine.chat_template
    plan = plan_chat(body, detect(template.source), lambda text: _special_token(s, text))
    prompt = s.engine.tokenize(template.render(plan.messages, tools=plan.template_tools), add_special=False)
    handle = s.engine.submit(adapt.chat_request(body, prompt, s.limits, plan))
    model = body.model or s.engine.model_id
    tools = plan.tools.format if plan.tools else None
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        encoder = adapt.ChatStream(model, include_usage=usage, logprobs=body.logprobs, tools=tools)
        return await stream(request, handle, encoder, s.metrics, 400)
    result = await whole(request, handle, s.metrics)
    return Response(adapt.chat_completion(model, result, body.logprobs, tools))


def _special_token(s: Services, text: str) -> int | None:
    """The id of ``text`` when the vocabulary holds it as one token (Mistral's ``[TOOL_CALLS]``)."""
    tokens = s.engine.tokenize(text, add_special=False)
    return tokens[0] if len(tokens) == 1 else None


@post("/completions", status_code=200, responses=sse_response(w.Completion))
async def completions(request: AnyRequest, data: w.CompletionRequest) -> Response[w.Completion] | Stream:
    """Text completion; with ``stream: true``, ``text_completion`` events over SSE."""
    s, body = services(request), data
    count_request(request, s.metrics)
    handle = s.engine.submit(adapt.completion_request(body, s.engine.tokenize, s.limits))
    model = body.model or s.engine.model_id
    logprobs = body.logprobs is not None
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        encoder = adapt.CompletionStream(model, include_usage=usage, logprobs=logprobs)
        return await stream(request, handle, encoder, s.metrics, 400)
    return Response(adapt.text_completion(model, await whole(request, handle, s.metrics), logprobs))


_STARTED = int(time.time())


@get("/models")
async def list_models(request: AnyRequest) -> w.ModelList:
    return w.ModelList([w.ModelCard(services(request).engine.model_id, _STARTED)])


openai_router = Router(
    path="/v1",
    route_handlers=[chat_completions, completions, list_models],
)
