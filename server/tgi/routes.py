"""TGI-compatible routes: /generate, /generate_stream, POST / (compat), /info, /tokenize."""

from __future__ import annotations

import asyncio

from litestar import HttpMethod, Response, Router, post, route
from litestar.response import Stream

from engine import ValidationError
from server.generation import count_request, sse_response, stream, whole
from server.state import AnyRequest, Services, services
from server.tgi import adapter as adapt
from server.tgi import wire as w
from server.version import VERSION


async def _generate(
    request: AnyRequest, body: w.GenerateRequest, streamed: bool
) -> w.GenerateResponse | Stream:
    s = services(request)
    count_request(request, s.metrics)
    # Off the event loop: tokenizing a long input takes a while and would pause every running stream.
    engine_request = await asyncio.to_thread(
        adapt.generation_request, body, s.engine.tokenize, s.engine.tokenize_tail, s.limits
    )
    handle = s.engine.submit(engine_request)
    if streamed:
        encoder = adapt.TgiStream(engine_request, body.inputs, body.parameters)
        return await stream(request, handle, encoder, s.metrics, 422)
    result = await whole(request, handle, s.metrics)
    return adapt.generate_response(engine_request, body.inputs, result, body.parameters)


@post("/generate", status_code=200)
async def generate(request: AnyRequest, data: w.GenerateRequest) -> w.GenerateResponse:
    """Generate a whole answer."""
    response = await _generate(request, data, streamed=False)
    assert isinstance(response, w.GenerateResponse)
    return response


@post("/generate_stream", status_code=200, responses=sse_response(w.StreamResponse))
async def generate_stream(request: AnyRequest, data: w.GenerateRequest) -> Stream:
    """Generate, streaming one ``StreamResponse`` event per token over SSE."""
    response = await _generate(request, data, streamed=True)
    assert isinstance(response, Stream)
    return response


@post("/", status_code=200, responses=sse_response(w.StreamResponse))
async def compat_generate(
    request: AnyRequest, data: w.GenerateRequest
) -> Response[list[w.GenerateResponse]] | Stream:
    """TGI's compatibility route: ``stream`` in the body picks the mode; a whole answer is a list."""
    # (Annotated with Response, not a bare list, so that Litestar does not force JSON on the stream.)
    response = await _generate(request, data, streamed=data.stream)
    return response if isinstance(response, Stream) else Response([response])


def info_of(s: Services) -> w.Info:
    return w.Info(
        model_id=s.engine.model_id,
        model_sha=None,
        model_dtype=s.engine.model_type,
        model_device_type="cuda" if s.engine.config.n_gpu_layers else "cpu",
        model_pipeline_tag="text-generation",
        max_concurrent_requests=s.engine.config.max_concurrent_requests,
        max_best_of=1,
        max_stop_sequences=s.limits.max_stop_sequences,
        max_input_tokens=s.limits.max_input_tokens,
        max_total_tokens=s.limits.max_total_tokens,
        validation_workers=1,
        max_client_batch_size=1,
        router="tokenspout",
        version=VERSION,
        sha=None,
        docker_label=None,
    )


@route("/info", http_method=[HttpMethod.GET, HttpMethod.HEAD])
async def info(request: AnyRequest) -> w.Info:
    return info_of(services(request))


@post("/tokenize", status_code=200)
async def tokenize(request: AnyRequest, data: w.TokenizeRequest) -> list[w.SimpleToken]:
    """The tokens of ``inputs``, with the character span each covers."""
    body = data
    if not body.inputs:
        raise ValidationError("Input validation error: `inputs` cannot be empty", "inputs")
    spans = await asyncio.to_thread(services(request).engine.token_spans, body.inputs)
    return adapt.tokenize_response(spans)


tgi_router = Router(
    path="/",
    route_handlers=[generate, generate_stream, compat_generate, info, tokenize],
)
