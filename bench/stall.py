"""The longest pause of a running stream while something heavy arrives beside it: a long prompt to
prefill, or a huge one (~1.9 MB) that must be rendered, tokenized and refused.

``python -m bench.stall`` runs both against a server of its own (or ``--url`` an existing one, which
must allow bodies of 4 MB: ``--payload-limit 4000000``).
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from collections.abc import Callable

import httpx

LONG_PROMPT_WORDS = 486  # 1,358 tokens with the default model, the size of the guide's llama-server probe
HUGE_PROMPT_BYTES = 1_900_000  # the size of the prompt that paused streams 618 ms (issue 10)
PAYLOAD_LIMIT = "4000000"  # the bench server's --payload-limit, so that the huge prompt gets through


def _longest_gap_while(base_url: str, send: Callable[[], None]) -> float:
    """Start a stream, wait until it runs, call ``send`` and return the longest gap between two of the
    stream's events from ``send``'s start to half a second after it returned."""
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
    sent = time.perf_counter()
    send()
    done = time.perf_counter()
    runner.join()
    # from the last event before ``send`` started: a stream frozen at that moment and released in a
    # burst afterwards shows its pause only from there
    before = [t for t in arrivals if t < sent][-1:]
    during = before + [t for t in arrivals if sent <= t <= done + 0.5]
    if done + 0.5 > arrivals[-1]:
        raise RuntimeError("the running stream ended before the measurement window did: raise max_tokens")
    gaps = [b - a for a, b in itertools.pairwise(during)]
    return max(gaps, default=float("nan"))


def longest_gap_during_prefill(base_url: str) -> tuple[float, int]:
    """(longest gap between two tokens of the running stream, prompt tokens of the newcomer)."""
    prompt = " ".join(f"word{i % 50}" for i in range(LONG_PROMPT_WORDS))
    replies: list[httpx.Response] = []

    def send() -> None:
        body = {"prompt": prompt, "max_tokens": 1}
        replies.append(httpx.post(f"{base_url}/v1/completions", json=body, timeout=300))

    gap = _longest_gap_while(base_url, send)
    return gap, int(replies[0].json()["usage"]["prompt_tokens"])


def huge_prompt_requests(n_bytes: int = HUGE_PROMPT_BYTES) -> dict[str, tuple[str, dict[str, object]]]:
    """The huge prompt as each route takes it: (path, body) by name. TGI's ``truncate`` keeps the
    input's last tokens, so that request cannot be refused before the whole input is tokenized."""
    text = ("All work and no play makes Jack a dull boy. " * (n_bytes // 44 + 1))[:n_bytes]
    return {
        "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": text}], "max_tokens": 1}),
        "completions": ("/v1/completions", {"prompt": text, "max_tokens": 1}),
        "tgi truncate": ("/generate", {"inputs": text, "parameters": {"max_new_tokens": 1, "truncate": 64}}),
    }


def longest_gap_during_huge_prompt(base_url: str, path: str, body: dict[str, object]) -> tuple[float, int]:
    """(longest gap of the running stream while the huge prompt arrives, the status it got)."""
    statuses: list[int] = []

    def send() -> None:
        statuses.append(httpx.post(f"{base_url}{path}", json=body, timeout=300).status_code)

    return _longest_gap_while(base_url, send), statuses[0]


def report(base_url: str, prefill: bool = True) -> None:
    # What the machine gives without anything arriving: the floor the other figures stand on.
    gap = _longest_gap_while(base_url, lambda: time.sleep(1.0))
    print(f"longest pause of a running stream in one second with nothing arriving: {gap * 1000:.0f} ms")
    if prefill:
        gap, n_prompt = longest_gap_during_prefill(base_url)
        print(
            f"longest pause of a running stream while a {n_prompt}-token prompt arrived: {gap * 1000:.0f} ms"
        )
    for name, (path, body) in huge_prompt_requests().items():
        gap, status = longest_gap_during_huge_prompt(base_url, path, body)
        print(
            f"longest pause of a running stream while a {HUGE_PROMPT_BYTES / 1e6:.1f} MB prompt arrived "
            f"({name}, answered {status}): {gap * 1000:.0f} ms",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="an existing server (started with --payload-limit 4000000)")
    parser.add_argument("--model", default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-prefill", action="store_true", help="only the huge-prompt probes")
    args = parser.parse_args()
    if args.url:
        report(args.url, prefill=not args.no_prefill)
        return
    from bench.server import running_server
    from models import ensure_model

    flags = ["--threads", str(args.threads), "--ctx-size", "8192", "--payload-limit", PAYLOAD_LIMIT]
    with running_server(args.model or str(ensure_model()), flags) as url:
        report(url, prefill=not args.no_prefill)


if __name__ == "__main__":
    main()
