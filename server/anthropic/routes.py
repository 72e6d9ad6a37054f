"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``. ``anthropic-version`` and
``anthropic-beta`` headers are accepted whatever they say."""

from __future__ import annotations

from litestar import Response, Router, post
from litestar.response import Stream

from server.anthropic import translate
from server.anthropic import wire as w
from server.anthropic.events import MessageStream, message_of
from server.conversation.plan import plan
from server.conversation.prompt import prompt, thinking
from server.conversation.reply import Reply
from server.generation import count_request, sse_response, stream, whole
from server.state import AnyRequest, services


@post("/messages", status_code=200, responses=sse_response(w.MessageStart))
async def create_message(request: AnyRequest, data: w.MessagesRequest) -> Response[w.Message] | Stream:
    """A message; with ``stream: true``, ``message_start`` .. ``message_stop`` events over SSE."""
    s, body = services(request), data
    count_request(request, s.metrics)
    chat = plan(translate.conversation(body), s.tools, s.thinking)
    tokens = await prompt(s, chat, "messages")
    thought = thinking(s, chat, tokens)
    handle = s.engine.submit(translate.generation_request(body, tokens, s.limits, chat, thought))
    model = body.model or s.engine.model_id
    reply = Reply(chat.tools, thinking=thought is not None)
    omit = translate.omitted(body)
    if body.stream:
        events = MessageStream(model, len(tokens), reply, omit)
        return await stream(request, handle, events, s.metrics, 400)
    return Response(message_of(model, await whole(request, handle, s.metrics), reply, omit))


@post("/messages/count_tokens", status_code=200)
async def count_tokens(request: AnyRequest, data: w.CountTokensRequest) -> w.TokenCount:
    """The prompt's tokens as the model would see them (tools included; a thinking template switched
    on or off as ``thinking`` asks, as for the message itself)."""
    s = services(request)
    chat = plan(translate.conversation(data), s.tools, s.thinking)
    return w.TokenCount(len(await prompt(s, chat, "messages")))


anthropic_router = Router(path="/v1", route_handlers=[create_message, count_tokens])
