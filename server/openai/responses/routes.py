"""``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from litestar import Response, Router, delete, get, post
from litestar.response import Stream

from engine import ValidationError
from server.conversation.plan import plan
from server.conversation.prompt import prompt, thinking
from server.conversation.reply import Reply
from server.generation import count_request, sse_response, stream, whole
from server.openai.responses import translate
from server.openai.responses import wire as w
from server.openai.responses.events import Echo, ResponseStream, assistant_turn, failed_stream, response_of
from server.openai.responses.store import ResponseStore
from server.sse import SSE_HEADERS, SSE_MEDIA_TYPE
from server.state import AnyRequest, services


def store_of(request: AnyRequest) -> ResponseStore:
    found: ResponseStore = request.app.state.responses
    return found


async def _once(frame: bytes) -> AsyncIterator[bytes]:
    yield frame


@post("/responses", status_code=200, responses=sse_response(w.ResponseEvent))
async def create_response(request: AnyRequest, data: w.ResponsesRequest) -> Response[w.Response] | Stream:
    """A model response; with ``stream: true``, typed events from ``response.created`` to
    ``response.completed`` over SSE."""
    s, body, store = services(request), data, store_of(request)
    count_request(request, s.metrics)
    previous = body.previous_response_id
    earlier = store.get(previous, "previous_response_id").turns if previous else ()
    conv, kept = translate.conversation(body, earlier)
    chat = plan(conv, s.tools, s.thinking)
    echo = Echo(body, body.model or s.engine.model_id, previous)
    try:
        tokens = await prompt(s, chat, "input")
        thought = thinking(s, chat, tokens)
        engine_request = translate.generation_request(body, tokens, s.limits, chat, thought)
    except ValidationError as exc:
        if not (body.stream and exc.field == "input"):
            raise
        # Codex reads a too-long conversation only from a failed stream, as OpenAI sends it.
        s.metrics.failure("validation")
        frames = _once(failed_stream(echo, "context_length_exceeded", str(exc)))
        return Stream(frames, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS, status_code=200)
    handle = s.engine.submit(engine_request)
    reply = Reply(chat.tools, thinking=thought is not None)

    def keep(response: w.Response) -> None:
        if body.store:
            store.put(response, (*kept, assistant_turn(response.output)))

    if body.stream:
        return await stream(request, handle, ResponseStream(echo, reply, keep), s.metrics, 400)
    response = response_of(echo, await whole(request, handle, s.metrics), reply)
    keep(response)
    return Response(response)


@get("/responses/{response_id:str}")
async def get_response(request: AnyRequest, response_id: str) -> w.Response:
    """A kept response; an unknown, deleted or evicted id is a 404 that says so."""
    return store_of(request).get(response_id).response


@delete("/responses/{response_id:str}", status_code=200)
async def delete_response(request: AnyRequest, response_id: str) -> w.Deleted:
    store_of(request).delete(response_id)
    return w.Deleted(response_id)


responses_router = Router(path="/v1", route_handlers=[create_response, get_response, delete_response])
