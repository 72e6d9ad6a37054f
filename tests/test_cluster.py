"""Replicas behind nginx (deploy/nginx.conf, as `just cluster` runs it): a 429 is retried on the next
replica without the client noticing, streams are not buffered, a dead replica is routed around, and
the gauges load-aware routers read move with the load. Real nginx, real replicas, loopback only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from bench.server import free_port
from deploy.cluster import TEMPLATE, Cluster, nginx_binary, render_site
from tests.helpers import metrics

pytestmark = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (`just nginx` installs Debian's package)"
)

# Every request in these tests is bounded: a request that hangs fails here instead of waiting forever.
CLIENT_TIMEOUT = 30.0


def chat(max_tokens: int) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "Tell me a story about the sea."}],
        "max_tokens": max_tokens,
        "stream": True,
    }


@pytest.fixture(scope="module")
def cluster(model_path: str) -> Iterator[Cluster]:
    """Replica A admits one request; B admits three, two at a time in its slots (so one can wait)."""
    common = ["--model", model_path, "--threads", "1", "--log-level", "warning"]
    with Cluster(
        [
            [*common, "--max-concurrent-requests", "1"],
            [*common, "--max-concurrent-requests", "3", "--parallel", "2"],
        ],
        listen=f"127.0.0.1:{free_port()}",
        replica_ports=[free_port(), free_port()],
    ) as running:
        yield running


def stream_status(
    url: str, body: dict[str, Any], tag: str = "", path: str = "/v1/chat/completions"
) -> tuple[int, int, str | None]:
    """Status, number of SSE events and Retry-After of one streamed request, read to the end. ``tag``
    goes in the query string, so that the test finds its own requests in nginx's access log."""
    with (
        httpx.Client(timeout=CLIENT_TIMEOUT) as client,
        client.stream("POST", f"{url}{path}?test={tag}", json=body) as response,
    ):
        events = sum(1 for line in response.iter_lines() if line.startswith("data: "))
        return response.status_code, events, response.headers.get("retry-after")


def burst(
    url: str, n: int, max_tokens: int, tag: str = "", path: str = "/v1/chat/completions"
) -> list[tuple[int, int, str | None]]:
    """``n`` streamed requests sent at the same instant, each on its own connection (chat
    completions, or Anthropic's messages with ``path="/v1/messages"``)."""
    body = chat(max_tokens)
    if path == "/v1/messages":
        body = {"model": "claude", "max_tokens": max_tokens, "stream": True, "messages": body["messages"]}
    results: list[Any] = [None] * n
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = stream_status(url, body, tag, path)
        except httpx.HTTPError as exc:  # recorded, so the assertion shows which request failed and how
            results[i] = (repr(exc), 0, None)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT + 5)
    return results


def logged(cluster: Cluster, tag: str, expected: int) -> list[str]:
    """The access log's ``$upstream_status`` of the ``expected`` requests tagged ``tag``."""
    deadline = time.monotonic() + 5
    while len(statuses := cluster.upstream_statuses(f"?test={tag} ")) < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)  # nginx logs a request when it ends, a moment after the client saw the end
    return statuses


def test_a_burst_straight_to_the_small_replica_gets_one_200_and_three_429s(cluster: Cluster) -> None:
    results = burst(cluster.replicas[0].url, 4, max_tokens=24)
    assert sorted(status for status, _, _ in results) == [200, 429, 429, 429], results
    for status, events, retry_after in results:
        if status == 429:
            assert events == 0  # refused before any byte of the stream
            assert retry_after is not None and 1 <= int(retry_after) <= 60
        else:
            assert events > 1


def test_the_same_burst_through_nginx_gets_four_200s_the_refused_ones_retried(cluster: Cluster) -> None:
    results = burst(cluster.url, 4, max_tokens=24, tag="one-burst")
    assert [status for status, _, _ in results] == [200] * 4, results
    assert all(events > 1 for _, events, _ in results)
    statuses = logged(cluster, "one-burst", 4)
    assert len(statuses) == 4, statuses
    # least_conn gives the small replica at least two of four simultaneous requests (it still holds
    # the first when the others arrive), so at least one is refused there and served by the other.
    assert set(statuses) <= {"200", "429, 200"}, statuses
    assert "429, 200" in statuses, statuses


def test_an_overloaded_messages_request_is_retried_by_nginx_as_well(cluster: Cluster) -> None:
    """Anthropic's overload is a 429 here (not Anthropic's 529, which nginx cannot retry)."""
    direct = burst(cluster.replicas[0].url, 3, max_tokens=24, path="/v1/messages")
    assert sorted(status for status, _, _ in direct) == [200, 429, 429], direct
    results = burst(cluster.url, 4, max_tokens=24, tag="messages-burst", path="/v1/messages")
    assert [status for status, _, _ in results] == [200] * 4, results
    statuses = logged(cluster, "messages-burst", 4)
    assert set(statuses) <= {"200", "429, 200"} and "429, 200" in statuses, statuses


def test_through_nginx_the_first_event_arrives_while_the_answer_is_still_generated(
    cluster: Cluster,
) -> None:
    running = [f"vllm:num_requests_running{{model_name={model_name(r.url)}}}" for r in cluster.replicas]
    started = time.monotonic()
    arrivals: list[float] = []
    running_at_first_event = -1.0
    body = {**chat(64), "temperature": 0, "ignore_eos": True}  # a sampled reply could stop at once
    with (
        httpx.Client(timeout=CLIENT_TIMEOUT) as client,
        connect_sse(client, "POST", f"{cluster.url}/v1/chat/completions", json=body) as source,
    ):
        assert source.response.status_code == 200
        for event in source.iter_sse():
            arrivals.append(time.monotonic() - started)
            if len(arrivals) == 1:  # the replica serving it must still be generating: nothing buffered
                running_at_first_event = sum(
                    metrics(r.url)[key] for r, key in zip(cluster.replicas, running, strict=True)
                )
            if event.data == "[DONE]":
                break
    assert running_at_first_event == 1
    assert len(arrivals) > 10
    # The events came over time, not in one lump at the end.
    assert arrivals[-1] - arrivals[0] > 0.3 * arrivals[-1], arrivals


def test_twenty_bursts_in_a_row_through_nginx_every_request_answered(cluster: Cluster) -> None:
    for n in range(20):
        results = burst(cluster.url, 4, max_tokens=4, tag="twenty")
        assert [status for status, _, _ in results] == [200] * 4, f"burst {n}: {results}"
    statuses = logged(cluster, "twenty", 80)
    assert len(statuses) == 80
    assert set(statuses) <= {"200", "429, 200"}, statuses


def test_the_router_gauges_move_as_requests_run_and_wait(cluster: Cluster) -> None:
    replica = cluster.replicas[1].url  # two slots, three admitted: the third waits
    name = model_name(replica)

    def gauges() -> tuple[float, float, float]:
        m = metrics(replica)
        return (
            m[f"vllm:num_requests_running{{model_name={name}}}"],
            m[f"vllm:num_requests_waiting{{model_name={name}}}"],
            m[f"vllm:kv_cache_usage_perc{{model_name={name}}}"],
        )

    deadline = time.monotonic() + 10
    while gauges() != (0, 0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)  # the previous test's last streams are ending
    assert gauges() == (0, 0, 0)
    seen: list[tuple[float, float, float]] = []
    holders = [
        threading.Thread(target=stream_status, args=(replica, {**chat(48), "ignore_eos": True}))
        for _ in range(3)
    ]
    for t in holders:
        t.start()
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while not (seen and seen[-1][:2] == (2, 1)) and time.monotonic() < deadline:
        seen.append(gauges())
        time.sleep(0.02)
    for t in holders:
        t.join(CLIENT_TIMEOUT)
    running, waiting, usage = seen[-1]
    assert (running, waiting) == (2, 1), seen
    assert 0 < usage < 1
    deadline = time.monotonic() + 10
    while gauges() != (0, 0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gauges() == (0, 0, 0)


def test_a_killed_replica_is_routed_around(model_path: str) -> None:
    common = ["--model", model_path, "--threads", "1", "--log-level", "warning"]
    with Cluster(
        [common, common], listen=f"127.0.0.1:{free_port()}", replica_ports=[free_port(), free_port()]
    ) as two:
        assert stream_status(two.url, chat(4))[0] == 200
        two.kill_replica(0)
        for _ in range(6):
            status, events, _ = stream_status(two.url, chat(4), "after-kill")
            assert (status, events > 1) == (200, True)
        statuses = logged(two, "after-kill", 6)
        assert len(statuses) == 6, statuses
        # nginx still tries the dead replica first now and then (max_fails=0), fails to connect
        # in an instant and sends the request to the live one.
        assert set(statuses) <= {"200", "502, 200"}, statuses
        assert "502, 200" in statuses, statuses


def test_a_retried_request_that_would_wait_silently_gets_a_clear_503_instead(model_path: str) -> None:
    """The issue's "Seen here": A refuses, nginx retries on B, B admits the request but has no free slot,
    and nothing (not even a status line) is sent before the first token, so the client waits on
    silence, gives up, and nginx logs `429, -` while B logs nothing. With --first-token-timeout the
    wait ends as a 503 `overloaded` that B logs and the client reads."""
    common = ["--model", model_path, "--threads", "1", "--log-level", "warning"]
    with Cluster(
        [
            [*common, "--max-concurrent-requests", "1"],
            [*common, "--max-concurrent-requests", "3", "--parallel", "1", "--first-token-timeout", "2"],
        ],
        listen=f"127.0.0.1:{free_port()}",
        replica_ports=[free_port(), free_port()],
    ) as small:
        results: list[Any] = [None] * 3
        start = threading.Barrier(3)

        def one(i: int) -> None:
            body = {**chat(400), "ignore_eos": True}
            start.wait()
            began = time.monotonic()
            error: Any = None
            with (
                httpx.Client(timeout=CLIENT_TIMEOUT) as client,
                client.stream("POST", f"{small.url}/v1/chat/completions?test=silent", json=body) as r,
            ):
                if r.status_code != 200:
                    error = json.loads(r.read())
                for _ in r.iter_lines():  # the admitted streams hold their slot for 4 s, then leave
                    if time.monotonic() - began > 4:
                        break
                results[i] = (r.status_code, time.monotonic() - began, r.headers.get("retry-after"), error)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CLIENT_TIMEOUT + 5)
        assert sorted(r[0] for r in results) == [200, 200, 503], results
        _, elapsed, retry_after, error = next(r for r in results if r[0] == 503)
        assert 2 <= elapsed < 4, elapsed  # the deadline, not the slot freed at 4 s
        assert retry_after is not None and 1 <= int(retry_after) <= 60
        assert error["error"]["type"] == "overloaded"
        statuses = logged(small, "silent", 3)
        assert sorted(statuses) in (["200", "200", "429, 503"], ["200", "200", "503"]), statuses


def test_render_site_lists_the_replicas_and_retries_each_once() -> None:
    replicas = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    text = render_site(TEMPLATE.read_text(), replicas, "127.0.0.1:9000", Path("/tmp/x/access.log"))
    servers = [line.strip() for line in text.splitlines() if line.strip().startswith("server 127.")]
    assert servers == [f"server 127.0.0.1:900{i} max_fails=0;" for i in (1, 2, 3)]
    assert "proxy_next_upstream_tries 3;" in text
    assert "listen 127.0.0.1:9000;" in text
    assert "access_log /tmp/x/access.log tokenspout;" in text
    assert "proxy_next_upstream error timeout http_429 non_idempotent;" in text


def model_name(url: str) -> str:
    name: str = httpx.get(f"{url}/info", timeout=10).json()["model_id"]
    return name
