"""What every generation route shares: start a stream or wait for a whole answer, and stop the engine's
work the moment the client walks away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol, TypeVar

from litestar import Request
from litestar.response import Stream

from engine import Completion, EngineError, FinishEvent, RequestHandle, TokenEvent
from server.errors import ClientGone, Problem, problem_from
from server.sse import SSE_HEADERS, SSE_MEDIA_TYPE

T = TypeVar("T")


class EventEncoder(Protocol):
    def token(self, event: TokenEvent) -> bytes | None: ...
    def finish(self, event: FinishEvent) -> bytes: ...
    def error(self, problem: Problem) -> bytes: ...


async def _disconnected(request: Request[object, object, object]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request[object, object, object], work: Awaitable[T]) -> T:
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


async def whole(request: Request[object, object, object], handle: RequestHandle) -> Completion:
    """The whole generation; errors raise (and become the route's error response)."""
    try:
        return await unless_disconnected(request, handle.collect())
    finally:
        handle.cancel()


async def stream(
    request: Request[object, object, object],
    handle: RequestHandle,
    encoder: EventEncoder,
    validation_status: int,
) -> Stream:
    """An SSE response. The first event is awaited here, so a failure before any token still gets a
    real HTTP error status; later failures become one error event at the end of the stream."""
    try:
        first = await unless_disconnected(request, handle.__anext__())
    except BaseException:
        handle.cancel()
        raise
    frames = _frames(handle, first, encoder, validation_status)
    return Stream(frames, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS, status_code=200)


async def _frames(
    handle: RequestHandle, first: TokenEvent | FinishEvent, encoder: EventEncoder, validation_status: int
) -> AsyncIterator[bytes]:
    try:
        event = first
        while type(event) is TokenEvent:
            chunk = encoder.token(event)
            if chunk is not None:
                yield chunk
            event = await handle.__anext__()
        assert isinstance(event, FinishEvent)
        yield encoder.finish(event)
    except EngineError as exc:
        yield encoder.error(problem_from(exc, validation_status))
    finally:
        handle.cancel()  # a no-op when finished; frees the slot when the client left mid-stream
