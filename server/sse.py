"""Server-Sent Events framing. Each frame is built once, as bytes, and handed straight to the socket."""

from __future__ import annotations

import msgspec

# One encoder for the life of the process: msgspec reuses its internal buffers between calls.
ENCODER = msgspec.json.Encoder()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_MEDIA_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"


def frame(payload: object) -> bytes:
    return b"data: %s\n\n" % ENCODER.encode(payload)


def named_frame(event: bytes, payload: object) -> bytes:
    """A frame with an ``event:`` line, as the Responses and Messages APIs send them (the anthropic
    SDK dispatches on that line, not on the data)."""
    return b"event: %s\ndata: %s\n\n" % (event, ENCODER.encode(payload))
