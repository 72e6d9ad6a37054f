"""Streaming clients for the bench: a raw one that parses nothing, and an ordinary one that parses every
SSE event as the SDKs do (httpx + httpx-sse + json).

On two cores the client shares the CPU with the server it measures, so the raw client shows the most
the server can do, and the ordinary one what a real client sees: the server's own CPU per token is
taken from llama.cpp's threads either way, and only the ordinary client makes that visible.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
from httpx_sse import aconnect_sse


class StreamResult(msgspec.Struct):
    sent: float  # perf_counter() when the request was sent
    first: float  # ... when the first token arrived
    last: float  # ... when the last token arrived
    tokens: int  # completion tokens, from the usage chunk
    prompt_tokens: int = 0
    cached: int = 0  # prompt tokens served from the prompt cache, when the server says

    @property
    def ttft(self) -> float:
        return self.first - self.sent


Streamer = Callable[[str, str, dict[str, Any]], Awaitable[StreamResult]]


async def raw_stream(base_url: str, path: str, body: dict[str, Any]) -> StreamResult:
    """One streamed request over a plain socket, reading bytes without parsing events (as curl -N)."""
    url = httpx.URL(base_url)
    host, port = url.host, url.port
    assert port is not None
    payload = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, port)
    sent = time.perf_counter()
    writer.write(head + payload)
    first = last = 0.0
    received = bytearray()
    while chunk := await reader.read(65536):
        now = time.perf_counter()
        if b"data: " in chunk:
            first = first or now
            if b'"usage":{' not in chunk:
                last = now
        received += chunk
    writer.close()
    assert received.startswith(b"HTTP/1.1 200"), bytes(received[:200])
    found = re.search(rb'"usage":\{[^}]*"completion_tokens":(\d+)', received)
    assert found, "the stream ended without a usage chunk"
    return StreamResult(sent, first, last, int(found.group(1)))


async def parsed_stream(
    base_url: str, path: str, body: dict[str, Any], on_text: Callable[[str], None] | None = None
) -> StreamResult:
    """One streamed request read as an SDK reads it: every SSE event parsed, its JSON decoded.
    ``on_text`` receives each chunk's text (chat deltas or completion text)."""
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    first = last = 0.0
    usage: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        sent = time.perf_counter()
        async with aconnect_sse(client, "POST", path, json=payload) as source:
            source.response.raise_for_status()
            async for event in source.aiter_sse():
                if event.data == "[DONE]":
                    break
                chunk = json.loads(event.data)
                if choices := chunk.get("choices"):
                    last = time.perf_counter()
                    first = first or last
                    if on_text is not None:
                        text = (
                            choices[0]["delta"].get("content")
                            if "delta" in choices[0]
                            else choices[0]["text"]
                        )
                        on_text(text or "")
                if chunk.get("usage"):  # its own chunk here; llama-server puts it in the last one
                    usage = chunk["usage"]
    details = usage.get("prompt_tokens_details") or {}
    return StreamResult(
        sent,
        first,
        last,
        int(usage["completion_tokens"]),
        int(usage["prompt_tokens"]),
        int(details.get("cached_tokens", 0)),
    )


async def stream_rate(
    streamer: Streamer, base_url: str, body: dict[str, Any], n_streams: int
) -> tuple[float, float, int]:
    """``n_streams`` concurrent streams: aggregate tokens/s from the first request sent to the last token
    received (prefill included, as a user waits for it), the median time to first token, and the
    tokens generated in all."""
    results = await asyncio.gather(*(streamer(base_url, "/v1/completions", body) for _ in range(n_streams)))
    tokens = sum(r.tokens for r in results)
    elapsed = max(r.last for r in results) - min(r.sent for r in results)
    return tokens / elapsed, statistics.median(r.ttft for r in results), tokens
