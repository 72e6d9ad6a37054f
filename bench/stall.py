"""The longest pause of a running stream while a long prompt arrives and is prefilled beside it."""

from __future__ import annotations

import itertools
import threading
import time

import httpx

LONG_PROMPT_WORDS = 486  # 1,358 tokens with the default model, the size of the guide's llama-server probe


def longest_gap_during_prefill(base_url: str) -> tuple[float, int]:
    """(longest gap between two tokens of the running stream, prompt tokens of the newcomer)."""
    arrivals: list[float] = []
    started = threading.Event()

    def run() -> None:
        body = {"prompt": "Write a long story.", "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.perf_counter())
                    if len(arrivals) == 20:
                        started.set()

    runner = threading.Thread(target=run)
    runner.start()
    started.wait(timeout=60)
    prompt = " ".join(f"word{i % 50}" for i in range(LONG_PROMPT_WORDS))
    sent = time.perf_counter()
    reply = httpx.post(
        f"{base_url}/v1/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=300
    ).json()
    done = time.perf_counter()
    runner.join()
    during = [t for t in arrivals if sent <= t <= done + 0.5]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    return max(gaps, default=float("nan")), int(reply["usage"]["prompt_tokens"])


def report(base_url: str) -> None:
    gap, n_prompt = longest_gap_during_prefill(base_url)
    print(f"longest pause of a running stream while a {n_prompt}-token prompt arrived: {gap * 1000:.0f} ms")
