"""Backpressure and cancellation: overloaded errors clients understand, and nothing leaks."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import random
import time
from typing import Any

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import OverloadedError

from tests.helpers import metrics, wait_until_idle
from tests.load import occupied, send_and_vanish

TGI_OVERLOADED = {"error": "Model is overloaded", "error_type": "overloaded"}
SHORT_CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
SHORT_TGI = {"inputs": "Hi", "parameters": {"max_new_tokens": 5}}
SHORT_MESSAGES = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def small_server(start_server: Any) -> Any:
    """Two requests admitted at most, one slot: easy to saturate."""
    with start_server("--max-concurrent-requests", "2", "--parallel", "1") as url:
        yield url


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", SHORT_TGI),
        ("/generate_stream", SHORT_TGI),
        ("/", {**SHORT_TGI, "stream": True}),
        ("/", SHORT_TGI),
        ("/v1/chat/completions", SHORT_CHAT),
        ("/v1/chat/completions", {**SHORT_CHAT, "stream": True}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 5, "stream": True}),
        ("/v1/responses", {"input": "Hi", "max_output_tokens": 5, "stream": True}),
        ("/v1/responses", {"input": "Hi", "max_output_tokens": 5}),
        ("/v1/messages", {**SHORT_MESSAGES, "stream": True}),
        ("/v1/messages", SHORT_MESSAGES),
    ],
)
def test_past_the_limit_every_route_answers_429_before_any_stream_byte(
    small_server: str, path: str, body: dict[str, Any]
) -> None:
    with occupied(small_server, 2):
        response = httpx.post(f"{small_server}{path}", json=body, timeout=10)
        assert response.status_code == 429
        assert 1 <= int(response.headers["retry-after"]) <= 60  # estimated from the queue
        assert response.headers["content-type"].startswith("application/json")
        if path.startswith("/v1/messages"):  # Anthropic's shape, with a status nginx and its SDK retry
            assert response.json() == {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Model is overloaded"},
            }
        elif path.startswith("/v1"):
            assert response.json() == {
                "error": {
                    "message": "Model is overloaded",
                    "type": "overloaded",
                    "param": None,
                    "code": "overloaded",
                }
            }
        else:
            assert response.json() == TGI_OVERLOADED


def test_clients_map_the_429_to_their_overloaded_errors(small_server: str) -> None:
    hub = InferenceClient(base_url=small_server, timeout=30)
    sdk = openai.OpenAI(base_url=f"{small_server}/v1", api_key="x", max_retries=0)
    before = metrics(small_server).get("tgi_request_failure{err=overloaded}", 0)
    with occupied(small_server, 2):
        with pytest.raises(OverloadedError):
            hub.text_generation("Hi", max_new_tokens=5)
        with pytest.raises(OverloadedError):
            list(hub.text_generation("Hi", max_new_tokens=5, stream=True))
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True
            )
    assert metrics(small_server)["tgi_request_failure{err=overloaded}"] == before + 4
    wait_until_idle(small_server)
    assert hub.text_generation("Hi", max_new_tokens=3)  # capacity is back


def _burst_request(url: str, i: int) -> tuple[int, list[float]]:
    """One request of the burst: its status, and for admitted streams the arrival time of each token."""
    body = {"prompt": f"Story number {i}:", "max_tokens": 100, "ignore_eos": True, "stream": i % 2 == 0}
    with httpx.Client(base_url=url, timeout=120) as c, c.stream("POST", "/v1/completions", json=body) as r:
        arrivals = [time.perf_counter() for line in r.iter_lines() if line.startswith("data: {")]
        return r.status_code, arrivals


def test_a_burst_of_three_times_the_limit_refuses_exactly_the_excess(start_server: Any) -> None:
    limit = 4
    with start_server("--max-concurrent-requests", str(limit), "--parallel", "2") as url:
        with concurrent.futures.ThreadPoolExecutor(3 * limit) as pool:
            results = list(pool.map(lambda i: _burst_request(url, i), range(3 * limit)))
        statuses = sorted(status for status, _ in results)
        assert statuses == [200] * limit + [429] * (2 * limit)
        for status, arrivals in results:
            if status == 200 and len(arrivals) > 2:  # an admitted stream kept flowing through the rejections
                gaps = [b - a for a, b in itertools.pairwise(arrivals)]
                assert max(gaps) < 2.0  # tokens normally come every ~30 ms; a stall would show
        final = wait_until_idle(url)
        assert final["tokenspout_requests_admitted"] == 0 and final["tokenspout_slots_free"] == 2
        assert final["tgi_request_failure{err=overloaded}"] == 2 * limit
        assert final["tgi_request_success"] == limit


def _leave_at_random(url: str, rng: random.Random) -> None:
    body = {
        "prompt": "Tell me everything about rivers.",
        "max_tokens": 500,
        "ignore_eos": True,
        "stream": True,
    }
    if rng.random() < 0.3:  # vanish before a single byte came back (queued, or still prefilling)
        send_and_vanish(url, "/v1/completions", body, after=rng.uniform(0, 0.3))
        return
    with httpx.Client(base_url=url, timeout=120) as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        wanted = rng.randint(1, 25)
        for n, _ in enumerate(r.iter_lines(), start=1):
            if n >= wanted:
                break


def test_fifty_streams_closed_at_random_points_leak_nothing(start_server: Any) -> None:
    with start_server("--parallel", "4") as url:
        rngs = [random.Random(seed) for seed in range(50)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda rng: _leave_at_random(url, rng), rngs))
        final = wait_until_idle(url, timeout=15)
        assert final["tokenspout_requests_admitted"] == 0
        assert final["tgi_batch_current_size"] == 0 and final["tgi_queue_size"] == 0
        assert final["tokenspout_slots_free"] == 4 and final["tokenspout_kv_cells_used"] == 0
        sent = time.perf_counter()
        reply = httpx.post(
            f"{url}/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}}, timeout=30
        )
        assert reply.status_code == 200
        assert time.perf_counter() - sent < 5  # served at once: nothing left ahead of it


def test_a_client_leaving_a_non_streamed_request_cancels_it(start_server: Any) -> None:
    with start_server("--parallel", "1") as url:
        body = {"prompt": "Write a long essay.", "max_tokens": 900, "ignore_eos": True}
        send_and_vanish(url, "/v1/completions", body, after=1.0)
        closed = time.perf_counter()
        final = wait_until_idle(url, timeout=10)
        assert final["tokenspout_requests_admitted"] == 0 and final["tokenspout_kv_cells_used"] == 0
        assert time.perf_counter() - closed < 5
        assert final["tgi_request_failure{err=cancelled}"] == 1
        assert json.loads(httpx.post(f"{url}/generate", json=SHORT_TGI, timeout=30).text)["generated_text"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"input": "Write a long essay.", "max_output_tokens": 400, "stream": True}),
        ("/v1/messages", {**SHORT_MESSAGES, "max_tokens": 400, "stream": True}),
    ],
)
def test_leaving_a_stream_of_the_agent_protocols_frees_its_slot(
    small_server: str, path: str, body: dict[str, Any]
) -> None:
    with httpx.Client(base_url=small_server, timeout=120) as c, c.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        for n, _ in enumerate(r.iter_lines()):
            if n >= 6:  # two events in: the answer is still being generated
                break
    final = wait_until_idle(small_server, timeout=15)
    assert final["tokenspout_requests_admitted"] == 0 and final["tokenspout_kv_cells_used"] == 0
