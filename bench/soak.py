"""``just soak``: a few hundred mixed requests against a small admission limit, then a leak check.

Streamed and not, both protocols, clients that vanish mid-answer, and bursts past the limit. Reports
requests by outcome, the 5xx count (must be 0), resident memory at start and end less the prompt
cache's saved states (growth under 10%), and whether slots, admission count and running requests' KV
cells are all free at the end.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import random
import sys
import time

import httpx
import msgspec

from bench.overload import LONG
from bench.server import running_server
from models import ensure_model

BURST_EVERY = 25  # every this many requests, one burst of 2x the limit at once


class SoakReport(msgspec.Struct):
    outcomes: dict[str, int]
    server_errors: int
    rss_start: float
    rss_end: float
    idle_at_end: bool
    final: dict[str, float]

    @property
    def rss_growth(self) -> float:
        return self.rss_end / self.rss_start - 1

    @property
    def passed(self) -> bool:
        return self.server_errors == 0 and self.rss_growth < 0.10 and self.idle_at_end


def _gauges(client: httpx.Client) -> dict[str, float]:
    values = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _request(url: str, rng: random.Random) -> str:
    """One random request; returns its outcome."""
    kind = rng.choice(["chat", "chat_stream", "completion_stream", "generate", "generate_stream", "compat"])
    streamed = kind.endswith("stream")
    tokens = rng.randint(1, 40)
    if kind.startswith(("chat", "completion")):
        path = "/v1/chat/completions" if kind.startswith("chat") else "/v1/completions"
        body: dict[str, object] = {
            "max_tokens": tokens,
            "stream": streamed,
            "temperature": rng.choice([0, 0.8]),
        }
        if kind.startswith("chat"):
            body["messages"] = [
                {"role": "user", "content": rng.choice(["Hi", "Tell me a story", "日本語で"])}
            ]
        else:
            body["prompt"] = "Once upon a time"
    else:
        path = "/generate_stream" if streamed else "/generate" if kind == "generate" else "/"
        body = {"inputs": "The ocean is", "parameters": {"max_new_tokens": tokens}}
    vanish_after = rng.randint(1, 5) if streamed and rng.random() < 0.3 else None
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        client.stream("POST", path, json=body) as response,
    ):
        if response.status_code != 200:
            response.read()
            if response.status_code == 429:
                time.sleep(0.2)  # back off a little, as a client that reads Retry-After does
            return f"http_{response.status_code}"
        if vanish_after is not None:
            for n, _ in enumerate(response.iter_lines(), start=1):
                if n >= vanish_after:
                    return "disconnected"
            return "ok"
        text = response.read().decode()
    if streamed and '"error' in text.rsplit("data: {", 1)[-1]:
        return "stream_error"
    return "ok"


def soak(
    url: str, n_requests: int, limit: int, parallel: int, seed: int = 0, concurrency: int = 6
) -> SoakReport:
    rng = random.Random(seed)
    outcomes: collections.Counter[str] = collections.Counter()
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(10):  # warm up, so start-up allocations do not count as growth
            _request(url, random.Random(rng.random()))
        start = _gauges(client)
        # The prompt cache's saved states are held on purpose (within --cache-ram): not a leak.
        rss_start = start["process_resident_memory_bytes"] - start["tokenspout_prompt_cache_bytes"]
        with concurrent.futures.ThreadPoolExecutor(concurrency + 2 * limit) as pool:
            regular: list[concurrent.futures.Future[str]] = []
            bursts: list[concurrent.futures.Future[str]] = []
            for i in range(n_requests):
                while sum(not f.done() for f in regular) >= concurrency:
                    time.sleep(0.01)
                regular.append(pool.submit(_request, url, random.Random(rng.random())))
                if i % BURST_EVERY == BURST_EVERY - 1 and all(f.done() for f in bursts):
                    bursts += [pool.submit(_burst_member, url) for _ in range(2 * limit)]
            for future in regular + bursts:
                outcomes[future.result()] += 1
        final = _settle(client)
        rss_end = final["process_resident_memory_bytes"] - final["tokenspout_prompt_cache_bytes"]
    idle = (
        final["tokenspout_requests_admitted"] == 0
        and final["tgi_batch_current_size"] == 0
        and final["tgi_queue_size"] == 0
        and final["tokenspout_kv_cells_used"] == 0
        and final["tokenspout_slots_free"] == parallel
    )
    errors = sum(n for outcome, n in outcomes.items() if outcome.startswith("http_5"))
    return SoakReport(dict(outcomes), errors, rss_start, rss_end, idle, final)


def _burst_member(url: str) -> str:
    body = {**LONG, "max_tokens": 30}
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        client.stream("POST", "/v1/completions", json=body) as r,
    ):
        r.read()
        return "ok" if r.status_code == 200 else f"http_{r.status_code}"


def _settle(client: httpx.Client, timeout: float = 15) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        gauges = _gauges(client)
        if gauges["tokenspout_requests_admitted"] == 0 and gauges["tokenspout_kv_cells_used"] == 0:
            return gauges
        if time.monotonic() > deadline:
            return gauges
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--limit", type=int, default=6, help="--max-concurrent-requests of the server")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = args.model or str(ensure_model())
    flags = [
        "--max-concurrent-requests",
        str(args.limit),
        "--parallel",
        str(args.parallel),
        "--log-level",
        "warning",
    ]
    started = time.monotonic()
    with running_server(model, flags) as url:
        report = soak(url, args.requests, args.limit, args.parallel, args.seed)
    print(json.dumps(report.outcomes, sort_keys=True))
    print(f"requests: {sum(report.outcomes.values())} in {time.monotonic() - started:.0f} s")
    print(f"5xx: {report.server_errors}")
    start, end = report.rss_start / 2**20, report.rss_end / 2**20
    print(f"resident memory: {start:.1f} MiB at start, {end:.1f} MiB at end ({report.rss_growth:+.1%})")
    print(f"slots, admissions and KV cells all free at the end: {report.idle_at_end}")
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
