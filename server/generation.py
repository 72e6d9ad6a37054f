"""What every generation route shares: start a stream or wait for a whole answer, count it in the
metrics, and stop the engine's work the moment the client walks away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol, TypeVar

from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Stream

from engine import Completion, EngineError, FinishEvent, RequestHandle, TokenEvent
from server.errors import ClientGone, FirstTokenTimeout, Problem, problem_from
from server.metrics import Metrics
from server.sse import SSE_HEADERS, SSE_MEDIA_TYPE
from server.state import AnyRequest, services

T = TypeVar("T")


class EventEncoder(Protocol):
    def token(self, event: TokenEvent) -> bytes | None: ...
    def finish(self, event: FinishEvent) -> bytes: ...
    def error(self, problem: Problem) -> bytes: ...


def sse_response(event: type) -> dict[int, ResponseSpec]:
    """OpenAPI: the 200 answer of a route that can stream, documented as the SSE event it sends."""
    return {
        200: ResponseSpec(
            data_container=event,
            media_type=SSE_MEDIA_TYPE,
            description="With `stream: true`: one `data: <event JSON>` per token over Server-Sent Events. "
            "Without: one JSON body.",
        )
    }


def count_request(request: AnyRequest, metrics: Metrics) -> None:
    """Count a generation request; its failure, if any, is then counted by the exception handler."""
    metrics.request()
    request.state.counted = True


async def _disconnected(request: AnyRequest) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: AnyRequest, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise :class:`ClientGone`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone
    return task.result()


async def first_event(request: AnyRequest, handle: RequestHandle) -> TokenEvent | FinishEvent:
    """The first event, within ``--first-token-timeout`` when one is set. Nothing has been sent before
    it, not even a status line: a request that waits longer (for a slot, behind a long prefill) would
    look to a proxy and a client exactly like a replica that never answers, so past the deadline it
    ends as a clear 503 ``overloaded`` instead. Cancelling the wait consumes no event."""
    seconds = services(request).settings.first_token_timeout
    if not seconds:
        return await handle.__anext__()
    try:
        return await asyncio.wait_for(handle.__anext__(), seconds)
    except TimeoutError:
        raise FirstTokenTimeout(seconds) from None


async def _collect(request: AnyRequest, handle: RequestHandle) -> Completion:
    return await handle.collect(await first_event(request, handle))


async def whole(request: AnyRequest, handle: RequestHandle, metrics: Metrics) -> Completion:
    """The whole generation; errors raise (and become the route's error response)."""
    try:
        result = await unless_disconnected(request, _collect(request, handle))
    finally:
        handle.cancel()
    metrics.success(result.finish)
    return result


async def stream(
    request: AnyRequest,
    handle: RequestHandle,
    encoder: EventEncoder,
    metrics: Metrics,
    validation_status: int,
) -> Stream:
    """An SSE response. The first event is awaited here, so a failure before any token still gets a
    real HTTP error status; later failures become one error event at the end of the stream."""
    try:
        first = await unless_disconnected(request, first_event(request, handle))
    except BaseException:
        handle.cancel()
        raise
    frames = _frames(handle, first, encoder, metrics, validation_status)
    return Stream(frames, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS, status_code=200)


async def _frames(
    handle: RequestHandle,
    event: TokenEvent | FinishEvent,
    encoder: EventEncoder,
    metrics: Metrics,
    validation_status: int,
) -> AsyncIterator[bytes]:
    try:
        while type(event) is TokenEvent:
            chunk = encoder.token(event)
            if chunk is not None:
                yield chunk
            event = await handle.__anext__()
        assert isinstance(event, FinishEvent)
        metrics.success(event)
        yield encoder.finish(event)
    except EngineError as exc:
        problem = problem_from(exc, validation_status)
        metrics.failure(problem.kind)
        yield encoder.error(problem)
    finally:
        if not handle.finished:  # the client left mid-stream: free the slot now
            metrics.failure("cancelled")
            handle.cancel()
