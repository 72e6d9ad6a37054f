"""Backpressure figures: how fast a rejection comes back while every slot is busy, and how soon a
slot is free again after its client disconnects."""

from __future__ import annotations

import statistics
import threading
import time

import httpx

# 4 of these fit the default 4096-token KV cache together
LONG = {"prompt": "Write a very long story.", "max_tokens": 900, "ignore_eos": True, "stream": True}


def _gauge(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def rejection_latencies(base_url: str, limit: int, n: int = 200) -> list[float]:
    """Saturate the server with ``limit`` long streams, then time ``n`` requests that must be refused."""
    release = threading.Event()

    def hold() -> None:
        with (
            httpx.Client(base_url=base_url, timeout=None) as c,
            c.stream("POST", "/v1/completions", json=LONG) as r,
        ):
            for _ in r.iter_lines():
                if release.is_set():
                    return

    holders = [threading.Thread(target=hold) for _ in range(limit)]
    for t in holders:
        t.start()
    latencies = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        deadline = time.monotonic() + 60
        while _gauge(client, "tokenspout_requests_admitted") < limit:
            if time.monotonic() > deadline:
                release.set()
                raise RuntimeError("the holding streams were never all admitted")
            time.sleep(0.05)
        time.sleep(0.5)  # let the streams reach steady decoding
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 5}}
        for _ in range(n):
            started = time.perf_counter()
            status = client.post("/generate", json=body).status_code
            latencies.append(time.perf_counter() - started)
            assert status == 429, status
    release.set()
    for t in holders:
        t.join()
    return latencies


def slot_free_delays(base_url: str, rounds: int = 10) -> list[float]:
    """Seconds from a streaming client's disconnect until /metrics shows its slot free again."""
    delays = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for _ in range(rounds):
            with client.stream("POST", "/v1/completions", json=LONG) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if n >= 10:
                        break
            closed = time.perf_counter()
            while _gauge(client, "tgi_batch_current_size") > 0:
                time.sleep(0.001)
            delays.append(time.perf_counter() - closed)
    return delays


def report(base_url: str, limit: int) -> None:
    rejections = rejection_latencies(base_url, limit)
    ms = sorted(x * 1000 for x in rejections)
    print(
        f"rejections while {limit} streams run: median {statistics.median(ms):.1f} ms, "
        f"p99 {ms[int(len(ms) * 0.99) - 1]:.1f} ms, worst {ms[-1]:.1f} ms ({len(ms)} requests)"
    )
    delays = [x * 1000 for x in slot_free_delays(base_url)]
    print(
        f"slot free after disconnect: median {statistics.median(delays):.0f} ms, worst {max(delays):.0f} ms"
    )
