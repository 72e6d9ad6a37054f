"""Load helpers for the backpressure tests: hold requests open, and leave abruptly like real clients."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx

from tests.helpers import metrics

LONG = {
    "prompt": "Write a very long story about the sea.",
    "max_tokens": 900,
    "ignore_eos": True,
    "stream": True,
}


@contextlib.contextmanager
def occupied(base_url: str, n: int) -> Iterator[None]:
    """Hold ``n`` long streaming requests admitted (running or queued) until the block ends."""
    release = threading.Event()

    def hold() -> None:
        with (
            httpx.Client(base_url=base_url, timeout=120) as c,
            c.stream("POST", "/v1/completions", json=LONG) as r,
        ):
            for _ in r.iter_lines():
                if release.is_set():
                    return

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while metrics(base_url)["tokenspout_requests_admitted"] < n:
        assert time.monotonic() < deadline, "the holding requests were not admitted"
        time.sleep(0.05)
    try:
        yield
    finally:
        release.set()
        for t in threads:
            t.join(timeout=30)


def send_and_vanish(base_url: str, path: str, body: dict[str, object], after: float) -> None:
    """Send a request over a raw socket and close it ``after`` seconds later, reading nothing."""
    url = httpx.URL(base_url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.host, url.port or 80)) as s:
        s.sendall(head + payload)
        time.sleep(after)
