"""A deadline for receiving a request whole: past it, 408 and the connection is closed.

uvicorn bounds only the idle time *between* requests (``timeout_keep_alive``). A connection that never
sends a request, or a request whose body never finishes arriving, is held forever: the ASGI app is
not even called until the headers are complete, nothing is logged and nothing is admitted. Behind a
proxy that looks like a replica that accepted a request and never answered (the proxy's log shows
``429, -`` for a retried request, the replica's log shows nothing). With this deadline that state
ends, after ``--request-read-timeout`` seconds, as a 408 in the protocol's error shape, a log line,
and a closed connection.

The clock starts when a connection opens and again at the first byte of each request on a kept-alive
connection, and stops once the request's last body byte has arrived; the time the app then takes to
answer is not bounded here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.errors import Problem, openai_body, tgi_body

log = logging.getLogger("tokenspout.server")

_ENCODER = msgspec.json.Encoder()


def timeout_response(path: bytes | None, seconds: float) -> bytes:
    """A whole HTTP/1.1 408 answer that closes the connection, in the body shape of ``path``'s
    protocol (OpenAI's under /v1, TGI's elsewhere, as every other error)."""
    problem = Problem(408, f"the request was not received whole within {seconds:g} s", "timeout")
    openai = path is not None and path.startswith(b"/v1/")
    body = _ENCODER.encode(openai_body(problem) if openai else tgi_body(problem))
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class ReadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on receiving each request."""

    read_timeout: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start_read_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_clock()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_deadline is None:
            self._start_read_clock()

    def on_message_complete(self) -> None:
        self._stop_read_clock()
        super().on_message_complete()

    def _start_read_clock(self) -> None:
        self._stop_read_clock()
        self._read_deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _stop_read_clock(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        # The request in progress is ``cycle`` only once its headers are complete; before that,
        # ``cycle`` is the previous request's (finished) or None.
        current = cycle is not None and not cycle.response_complete
        if current and cycle is not None:
            if cycle.response_started:  # the app already answers (say, 413 without reading the body)
                self.transport.close()
                return
            # The app waits for the rest of the body: it will read a disconnect, and what it might
            # still send is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        path = getattr(self, "url", None) or None
        log.warning(
            "%s: request not received whole within %g s: answered 408 and closed the connection",
            "{}:{}".format(*self.client) if self.client else "client",
            self.read_timeout,
        )
        self.transport.write(timeout_response(path, self.read_timeout))
        self.transport.close()


def protocol_with_read_timeout(seconds: float) -> type[ReadTimeoutProtocol]:
    """The protocol class to hand to ``uvicorn.Config(http=...)``."""
    return type("ReadTimeoutProtocol", (ReadTimeoutProtocol,), {"read_timeout": seconds})
