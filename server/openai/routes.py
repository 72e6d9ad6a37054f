"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import asyncio
import time

from litestar import HttpMethod, Response, Router, post, route
from litestar.response import Stream

from server.conversation.plan import plan
from server.conversation.prompt import prompt as chat_prompt
from server.conversation.prompt import thinking
from server.conversation.reply import Reply
from server.errors import ModelNotFound
from server.generation import count_request, sse_response, stream, whole
from server.openai import adapter as adapt
from server.openai import wire as w
from server.openai.conversation import conversation
from server.state import AnyRequest, services


@post("/chat/completions", status_code=200, responses=sse_response(w.ChatCompletionChunk))
async def chat_completions(
    request: AnyRequest, data: w.ChatCompletionRequest
) -> Response[w.ChatCompletion] | Stream:
    """Chat completion; with ``stream: true``, ``chat.completion.chunk`` events over SSE."""
    s, body = services(request), data
    count_request(request, s.metrics)
    chat = plan(conversation(body), s.tools, s.thinking)
    prompt = await chat_prompt(s, chat, "messages")
    thought = thinking(s, chat, prompt)
    handle = s.engine.submit(adapt.chat_request(body, prompt, s.limits, chat, thought))
    model = body.model or s.engine.model_id
    reply = Reply(chat.tools, thinking=thought is not None)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        encoder = adapt.ChatStream(model, include_usage=usage, logprobs=body.logprobs, reply=reply)
        return await stream(request, handle, encoder, s.metrics, 400)
    result = await whole(request, handle, s.metrics)
    return Response(adapt.chat_completion(model, result, body.logprobs, reply))


@post("/completions", status_code=200, responses=sse_response(w.Completion))
async def completions(request: AnyRequest, data: w.CompletionRequest) -> Response[w.Completion] | Stream:
    """Text completion; with ``stream: true``, ``text_completion`` events over SSE."""
    s, body = services(request), data
    count_request(request, s.metrics)
    engine_request = await asyncio.to_thread(adapt.completion_request, body, s.engine.tokenize, s.limits)
    handle = s.engine.submit(engine_request)
    model = body.model or s.engine.model_id
    logprobs = body.logprobs is not None
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        encoder = adapt.CompletionStream(model, include_usage=usage, logprobs=logprobs)
        return await stream(request, handle, encoder, s.metrics, 400)
    return Response(adapt.text_completion(model, await whole(request, handle, s.metrics), logprobs))


_STARTED = int(time.time())


@route("/models", http_method=[HttpMethod.GET, HttpMethod.HEAD])
async def list_models(request: AnyRequest) -> w.ModelList:
    return w.ModelList([w.ModelCard(services(request).engine.model_id, _STARTED)])


@route("/models/{model_id:str}", http_method=[HttpMethod.GET, HttpMethod.HEAD])
async def retrieve_model(request: AnyRequest, model_id: str) -> w.ModelCard:
    """The card of the served model. Another id is a 404 (``model_not_found``), as OpenAI answers:
    generation routes accept any ``model`` name, but a card for a model we do not serve would lie."""
    served = services(request).engine.model_id
    if model_id != served:
        raise ModelNotFound(model_id, served)
    return w.ModelCard(served, _STARTED)


openai_router = Router(
    path="/v1",
    route_handlers=[chat_completions, completions, list_models, retrieve_model],
)
