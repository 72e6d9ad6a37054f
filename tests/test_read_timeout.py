"""A request that never arrives whole ends as a 408 and a closed connection, not as a connection held
forever (uvicorn alone has no deadline for it: the app is never called, nothing is logged)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import metrics

DEADLINE = 1.0
BODY = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).encode()


@pytest.fixture(scope="module")
def server(start_server: Any) -> Iterator[str]:
    with start_server("--request-read-timeout", str(DEADLINE)) as url:
        yield url


def head(path: str, length: int) -> bytes:
    fields = f"Host: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    return f"POST {path} HTTP/1.1\r\n{fields}\r\n".encode()


def answer_of(url: str, first_bytes: bytes) -> tuple[bytes, float]:
    """Send ``first_bytes`` and nothing more; everything the server sends until it closes, and when."""
    parsed = httpx.URL(url)
    with socket.create_connection((parsed.host, parsed.port or 80)) as s:
        s.settimeout(DEADLINE + 10)
        started = time.monotonic()
        s.sendall(first_bytes)
        received = b""
        while chunk := s.recv(65536):  # until the server closes; a hang fails on the socket timeout
            received += chunk
        return received, time.monotonic() - started


def status_and_body(answer: bytes) -> tuple[int, Any]:
    header, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in header.lower()
    return int(header.split()[1]), json.loads(body)


def test_a_body_that_never_finishes_gets_408_in_openai_shape(server: str) -> None:
    answer, elapsed = answer_of(server, head("/v1/chat/completions", len(BODY)) + BODY[:10])
    status, body = status_and_body(answer)
    assert status == 408
    assert body["error"]["type"] == "invalid_request_error"
    assert "not received whole" in body["error"]["message"]
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + 5  # the server's clock starts a moment before ours
    assert metrics(server)["tokenspout_requests_admitted"] == 0


def test_headers_that_never_finish_get_408_in_tgi_shape(server: str) -> None:
    answer, _ = answer_of(server, b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Le")
    status, body = status_and_body(answer)
    assert status == 408
    assert body["error_type"] == "timeout"


def test_a_connection_that_sends_nothing_is_closed(server: str) -> None:
    answer, elapsed = answer_of(server, b"")
    assert status_and_body(answer)[0] == 408
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + 5  # the server's clock starts a moment before ours


def test_an_answer_that_outlasts_the_deadline_is_not_cut_nor_an_idle_kept_alive_connection(
    server: str,
) -> None:
    # The deadline covers receiving the request only: a stream the client reads slowly, for longer
    # than the deadline, is untouched, and the same connection serves another request after idling
    # past the deadline (uvicorn's keep-alive timeout, 5 s, governs idle connections).
    with httpx.Client(base_url=server, timeout=60) as client:
        body = {"prompt": "The sea", "max_tokens": 20, "ignore_eos": True, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            time.sleep(DEADLINE + 0.5)
            events = [first, *(line for line in lines if line.startswith("data: "))]
        assert response.status_code == 200
        assert len(events) > 2 and events[-1] == "data: [DONE]"
        time.sleep(DEADLINE + 0.5)
        again = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert again.status_code == 200
