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
import msgspec

LONG_PROMPT_WORDS = 486  # 1,358 tokens with the default model, the size of the guide's llama-server probe
HUGE_PROMPT_BYTES = 1_900_000  # the size of the prompt that paused streams 618 ms (issue 10)
PAYLOAD_LIMIT = "4000000"  # the bench server's --payload-limit, so that the huge prompt gets through


class Pauses(msgspec.Struct, frozen=True):
    stream: float  # longest gap between two events of the running stream, seconds
    loop: float  # longest time the server took to answer GET /health meanwhile (its event loop's pause)


def _pauses_while(base_url: str, send: Callable[[], None]) -> Pauses:
    """Start a stream, wait until it runs, call ``send``. The stream's longest pause spans the last
    event before ``send`` to the first one after it returned (a stream frozen meanwhile and released
    in a burst shows its whole pause). /health is polled meanwhile: it is answered on the event loop
    and touches no model, so its slowest answer isolates a blocked loop from a CPU-starved decode."""
    arrivals: list[float] = []
    started, enough, sent_event = threading.Event(), threading.Event(), threading.Event()
    health: list[float] = []

    def run() -> None:
        body = {"prompt": "Write a long story.", "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.perf_counter())
                    if len(arrivals) == 20:
                        started.set()
                if enough.is_set():  # leaving closes the stream: the server cancels it
                    return

    def poll() -> None:
        with httpx.Client(base_url=base_url, timeout=300) as client:
            sent_event.wait()
            while not enough.is_set():
                t = time.perf_counter()
                client.get("/health")
                health.append(time.perf_counter() - t)
                time.sleep(0.02)

    runner, poller = threading.Thread(target=run), threading.Thread(target=poll)
    runner.start()
    poller.start()
    started.wait(timeout=300)
    sent = time.perf_counter()
    sent_event.set()
    send()
    done = time.perf_counter()
    while runner.is_alive() and arrivals[-1] <= done:
        time.sleep(0.05)
    enough.set()
    sent_event.set()
    runner.join()
    poller.join()
    if arrivals[-1] <= done:
        raise RuntimeError("the running stream ended before the probe did: raise max_tokens")
    first = max(i for i, t in enumerate(arrivals) if t < sent)
    last = min(i for i, t in enumerate(arrivals) if t > done)
    gaps = [b - a for a, b in itertools.pairwise(arrivals[first : last + 1])]
    return Pauses(max(gaps), max(health, default=float("nan")))


def longest_gap_during_prefill(base_url: str) -> tuple[float, int]:
    """(longest gap between two tokens of the running stream, prompt tokens of the newcomer)."""
    prompt = " ".join(f"word{i % 50}" for i in range(LONG_PROMPT_WORDS))
    replies: list[httpx.Response] = []

    def send() -> None:
        body = {"prompt": prompt, "max_tokens": 1}
        replies.append(httpx.post(f"{base_url}/v1/completions", json=body, timeout=300))

    pauses = _pauses_while(base_url, send)
    return pauses.stream, int(replies[0].json()["usage"]["prompt_tokens"])


def huge_prompt_requests(n_bytes: int = HUGE_PROMPT_BYTES) -> dict[str, tuple[str, dict[str, object]]]:
    """The huge prompt as each route takes it: (path, body) by name. TGI's ``truncate`` keeps the
    input's last tokens, so that request cannot be refused before the whole input is tokenized."""
    text = ("All work and no play makes Jack a dull boy. " * (n_bytes // 44 + 1))[:n_bytes]
    return {
        "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": text}], "max_tokens": 1}),
        "completions": ("/v1/completions", {"prompt": text, "max_tokens": 1}),
        "tgi truncate": ("/generate", {"inputs": text, "parameters": {"max_new_tokens": 1, "truncate": 64}}),
    }


def pauses_during_huge_prompt(base_url: str, path: str, body: dict[str, object]) -> tuple[Pauses, int]:
    """(the pauses while the huge prompt arrives, the status it got)."""
    statuses: list[int] = []

    def send() -> None:
        statuses.append(httpx.post(f"{base_url}{path}", json=body, timeout=300).status_code)

    return _pauses_while(base_url, send), statuses[0]


def _ms(pauses: Pauses) -> str:
    return f"stream {pauses.stream * 1000:.0f} ms, event loop (/health) {pauses.loop * 1000:.0f} ms"


def report(base_url: str, prefill: bool = True) -> None:
    # What the machine gives without anything arriving: the floor the other figures stand on.
    idle = _pauses_while(base_url, lambda: time.sleep(1.0))
    print(f"longest pauses in one second with nothing arriving: {_ms(idle)}")
    if prefill:
        gap, n_prompt = longest_gap_during_prefill(base_url)
        print(
            f"longest pause of a running stream while a {n_prompt}-token prompt arrived: {gap * 1000:.0f} ms"
        )
    for name, (path, body) in huge_prompt_requests().items():
        pauses, status = pauses_during_huge_prompt(base_url, path, body)
        size = f"{HUGE_PROMPT_BYTES / 1e6:.1f} MB"
        print(
            f"longest pauses while a {size} prompt arrived ({name}, answered {status}): {_ms(pauses)}",
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
