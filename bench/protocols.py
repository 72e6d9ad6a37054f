"""One stream over each chat protocol: chat completions, Responses and Messages, read by an ordinary
client that parses every SSE event (httpx + httpx-sse + json, as the SDKs do). The same greedy
answer, the same length (``ignore_eos``), rounds interleaved in rotating order so that drift on a
shared machine hits each protocol alike; the ratios to chat completions are the figure."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from bench.client import StreamResult, parsed_stream

MESSAGES = [{"role": "user", "content": "Write a long story about the sea."}]


async def _events(base_url: str, path: str, body: dict[str, Any]) -> tuple[float, list[tuple[float, Any]]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        sent = time.perf_counter()
        async with aconnect_sse(client, "POST", path, json=body) as source:
            source.response.raise_for_status()
            return sent, [(time.perf_counter(), json.loads(e.data)) async for e in source.aiter_sse()]


async def chat(base_url: str, n_tokens: int) -> StreamResult:
    body = {"messages": MESSAGES, "max_tokens": n_tokens, "temperature": 0, "ignore_eos": True}
    return await parsed_stream(base_url, "/v1/chat/completions", body)


async def responses(base_url: str, n_tokens: int) -> StreamResult:
    body = {
        "input": MESSAGES,
        "max_output_tokens": n_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    sent, events = await _events(base_url, "/v1/responses", body)
    deltas = [at for at, e in events if e["type"] == "response.output_text.delta"]
    final = events[-1][1]["response"]["usage"]
    return StreamResult(sent, deltas[0], deltas[-1], final["output_tokens"], final["input_tokens"])


async def messages(base_url: str, n_tokens: int) -> StreamResult:
    body = {
        "messages": MESSAGES,
        "max_tokens": n_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    sent, events = await _events(base_url, "/v1/messages", body)
    deltas = [at for at, e in events if e["type"] == "content_block_delta"]
    usage = next(e for _, e in events if e["type"] == "message_delta")["usage"]
    return StreamResult(sent, deltas[0], deltas[-1], usage["output_tokens"])


PROTOCOLS: dict[str, Callable[[str, int], Coroutine[Any, Any, StreamResult]]] = {
    "chat completions": chat,
    "responses": responses,
    "messages": messages,
}


def report(base_url: str, rounds: int, n_tokens: int) -> None:
    rates: dict[str, list[float]] = {name: [] for name in PROTOCOLS}
    names = list(PROTOCOLS)
    asyncio.run(chat(base_url, 8))  # warm the prompt cache: every protocol then prefills alike
    for round_ in range(1, rounds + 1):
        order = names[round_ % 3 :] + names[: round_ % 3]
        for name in order:
            r = asyncio.run(PROTOCOLS[name](base_url, n_tokens))
            rates[name].append(r.tokens / (r.last - r.sent))
        print(f"round {round_}: " + ", ".join(f"{n} {rates[n][-1]:6.1f} tok/s" for n in names), flush=True)
    base = rates["chat completions"]
    for name in names[1:]:
        ratio = statistics.median(a / b for a, b in zip(rates[name], base, strict=True))
        print(f"one stream over {name} / over chat completions: {ratio:.3f} (goal >= 0.98)")
    print()
