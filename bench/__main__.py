"""``just bench``: streams from a real tokenspout server and, in the same run, the bare llama.cpp loop.

Rounds alternate bare and HTTP measurements so that drift on a shared machine hits both alike; the
ratios of each round are reported with their median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time

import httpx
import msgspec

from bench import overload, stall
from bench.bare import PROMPT
from bench.server import running_server
from models import ensure_model


class StreamResult(msgspec.Struct):
    ttft: float  # request sent -> first token
    first: float  # absolute time of the first token
    last: float  # absolute time of the last token
    tokens: int


async def one_stream(host: str, port: int, n_tokens: int) -> StreamResult:
    """One streamed completion over a plain socket: the client does no parsing per event, so it takes
    as little CPU as possible from the server it measures (as curl -N would)."""
    body = json.dumps(
        {
            "prompt": PROMPT,
            "max_tokens": n_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, port)
    sent = time.perf_counter()
    writer.write(head + body)
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
    found = re.search(rb'"usage":\{"prompt_tokens":\d+,"completion_tokens":(\d+)', received)
    assert found, "the stream ended without a usage chunk"
    return StreamResult(first - sent, first, last, int(found.group(1)))


async def http_rate(base_url: str, n_streams: int, n_tokens: int) -> tuple[float, float]:
    """Aggregate decode tokens/s over ``n_streams`` concurrent streams, and the median TTFT."""
    url = httpx.URL(base_url)
    assert url.port is not None
    results = await asyncio.gather(*(one_stream(url.host, url.port, n_tokens) for _ in range(n_streams)))
    start = max(r.first for r in results)  # every stream decoding from here on
    end = min(r.last for r in results)
    # tokens produced by all streams between ``start`` and ``end``, assuming a steady rate per stream
    tokens = sum((r.tokens - 1) * (end - start) / (r.last - r.first) for r in results)
    return tokens / (end - start), statistics.median(r.ttft for r in results)


def bare_rate(model: str, threads: int, n_seq: int, n_tokens: int) -> float:
    command = [sys.executable, "-m", "bench.bare", model, str(threads), str(n_seq), str(n_tokens)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)["tokens_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256, help="tokens generated per stream")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = args.model or str(ensure_model())
    flags = ["--threads", str(args.threads), "--parallel", "4"]
    rows: dict[str, list[float]] = {"bare1": [], "http1": [], "bare4": [], "http4": [], "ttft": []}
    with running_server(model, flags) as base_url:
        for round_ in range(1, args.rounds + 1):
            rows["bare1"].append(bare_rate(model, args.threads, 1, args.tokens))
            rate, ttft = asyncio.run(http_rate(base_url, 1, args.tokens))
            rows["http1"].append(rate)
            rows["ttft"].append(ttft)
            rows["bare4"].append(bare_rate(model, args.threads, 4, args.tokens))
            rows["http4"].append(asyncio.run(http_rate(base_url, 4, args.tokens))[0])
            print(
                f"round {round_}: 1 stream {rows['http1'][-1]:6.1f} tok/s vs bare {rows['bare1'][-1]:6.1f}"
                f" ({rows['http1'][-1] / rows['bare1'][-1]:.3f}) | 4 streams {rows['http4'][-1]:6.1f}"
                f" vs bare {rows['bare4'][-1]:6.1f} ({rows['http4'][-1] / rows['bare4'][-1]:.3f})"
                f" | TTFT {ttft * 1000:.0f} ms",
                flush=True,
            )
    one = statistics.median(h / b for h, b in zip(rows["http1"], rows["bare1"], strict=True))
    four = statistics.median(h / b for h, b in zip(rows["http4"], rows["bare4"], strict=True))
    print(f"\nmedian ratio, 1 stream:  {one:.3f}  (goal >= 0.96)")
    print(f"median ratio, 4 streams: {four:.3f}  (goal >= 0.95)")
    print(f"median time to first token, 1 stream: {statistics.median(rows['ttft']) * 1000:.0f} ms\n")
    # 2,048 cells per slot, so that the stall probe's 1,358-token prompt fits one slot
    busy = ["--threads", str(args.threads), "--parallel", "4", "--max-concurrent-requests", "4"]
    # and bodies of up to 4 MB, so that the stall probe's 1.9 MB prompt reaches the routes
    with running_server(model, [*busy, "--ctx-size", "8192", "--payload-limit", stall.PAYLOAD_LIMIT]) as url:
        overload.report(url, limit=4)
        stall.report(url)


if __name__ == "__main__":
    main()
