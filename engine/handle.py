"""The caller's side of a generation: an async iterator of events that can be cancelled.

A handle lives on the event loop. The scheduler thread never touches it directly: it hands events
over in one ``call_soon_threadsafe`` per decode step, and :func:`deliver` appends them here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Self

from engine.types import Completion, ErrorEvent, Event, FinishEvent, TokenEvent


class RequestHandle:
    """Yields :class:`TokenEvent` objects, then one :class:`FinishEvent` (which carries the last
    token); raises the engine error
    of a failed generation. ``cancel()`` (or closing an unfinished stream) frees the slot."""

    __slots__ = ("_events", "_finished", "_on_cancel", "_on_end", "_waiter", "request_id")

    def __init__(
        self,
        request_id: int,
        on_cancel: Callable[[RequestHandle], None],
        on_end: Callable[[RequestHandle], None],
    ) -> None:
        self.request_id = request_id
        self._events: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._finished = False
        self._on_cancel = on_cancel
        self._on_end = on_end

    @property
    def finished(self) -> bool:
        return self._finished

    def push(self, event: Event) -> None:
        self._events.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> TokenEvent | FinishEvent:
        events = self._events
        while not events:
            if self._finished:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = events.popleft()
        if isinstance(event, TokenEvent):
            return event
        self._end()
        if isinstance(event, ErrorEvent):
            raise event.error
        return event

    def cancel(self) -> None:
        """Stop the generation at the next engine step. Idempotent; a no-op once finished."""
        if not self._finished:
            self._end()
            self._on_cancel(self)

    async def collect(self, first: TokenEvent | FinishEvent | None = None) -> Completion:
        """Wait for the whole generation (``first``: its first event, when the caller already took
        it). If the waiting task is cancelled, so is the generation."""
        tokens: list[TokenEvent] = []
        try:
            if isinstance(first, FinishEvent):
                return _completion([first.token], first)
            if first is not None:
                tokens.append(first)
            async for event in self:
                if isinstance(event, FinishEvent):
                    tokens.append(event.token)
                    return _completion(tokens, event)
                tokens.append(event)
        finally:
            self.cancel()
        raise AssertionError("a generation ended without a finish event")

    def _end(self) -> None:
        if not self._finished:
            self._finished = True
            self._on_end(self)


def _completion(tokens: list[TokenEvent], finish: FinishEvent) -> Completion:
    if not finish.usage.reasoning_tokens:
        return Completion("".join([t.text for t in tokens]), tuple(tokens), finish)
    answer = "".join([t.text for t in tokens if not t.reasoning])
    thought = "".join([t.text for t in tokens if t.reasoning])
    return Completion(answer, tuple(tokens), finish, thought)


def deliver(batch: list[tuple[RequestHandle, Event]]) -> None:
    """Runs on the event loop: hand one decode step's events to their handles."""
    for handle, event in batch:
        handle.push(event)
