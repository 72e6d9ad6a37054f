"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import time

from litestar import Response, Router, get, post
from litestar.response import Stream

from server import openai_adapter as adapt
from server import openai_wire as w
from server.auth import require_api_key
from server.errors import openai_exception_handler
from server.generation import count_request, stream, whole
from server.state import AnyRequest, services


@post("/chat/completions", status_code=200)
async def chat_completions(request: AnyRequest) -> Response[w.ChatCompletion] | Stream:
    s = services(request)
    count_request(request, s.metrics)
    body = w.chat_request_decoder.decode(await request.body())
    prompt = s.engine.tokenize(s.engine.render_chat(adapt.chat_messages(body)), add_special=False)
    handle = s.engine.submit(adapt.chat_request(body, prompt, s.limits))
    model = body.model or s.engine.model_id
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        encoder = adapt.ChatStream(model, include_usage=usage, logprobs=body.logprobs)
        return await stream(request, handle, encoder, s.metrics, 400)
    return Response(adapt.chat_completion(model, await whole(request, handle, s.metrics), body.logprobs))


@post("/completions", status_code=200)
async def completions(request: AnyRequest) -> Response[w.Completion] | Stream:
    s = services(request)
    count_request(request, s.metrics)
    body = w.completion_request_decoder.decode(await request.body())
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
    exception_handlers={Exception: openai_exception_handler},
    guards=[require_api_key],
)
