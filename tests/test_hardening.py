"""Bad input gets a clear 4xx in its route's shape, never a 5xx; keys guard the API; faults stay local;
SIGTERM drains."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from typing import Any

import httpx
import pytest

from bench.server import spawn, stop
from tests.helpers import metrics, wait_until_idle

CHAT = "/v1/chat/completions"
SHORT_TGI = {"inputs": "hi", "parameters": {"max_new_tokens": 2}}
LONG_TEXT = "word " * 40_000  # about 40,000 tokens: more than a slot holds within the default KV budget


def user(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 5}


OPENAI_CASES: list[tuple[str, bytes | dict[str, Any], str | None]] = [
    (CHAT, b"{bad json", None),
    (CHAT, b"\xff\xfe not utf-8", None),
    (CHAT, b'{"messages":[{"role":"user","content":"\\ud800"}]}', None),
    (CHAT, {"messages": "hi"}, "messages"),
    (CHAT, {}, "messages"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
    (CHAT, {**user("hi"), "temperature": 5}, "temperature"),
    (CHAT, {**user("hi"), "top_p": 1.5}, "top_p"),
    (CHAT, {**user("hi"), "max_tokens": 0}, "max_tokens"),
    (CHAT, {**user("hi"), "max_tokens": -3}, "max_tokens"),
    (CHAT, {**user("hi"), "max_tokens": 100_000}, "max_tokens"),  # more than any slot holds
    (CHAT, {**user("hi"), "n": 2}, "n"),
    (CHAT, {**user("hi"), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    (CHAT, {**user("hi"), "top_logprobs": 3}, "top_logprobs"),
    (CHAT, user(LONG_TEXT), "messages"),
    ("/v1/completions", {"prompt": "", "max_tokens": 5}, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 5}, "prompt"),
    ("/v1/completions", {"prompt": 7}, "prompt"),
    ("/v1/completions", {"prompt": LONG_TEXT, "max_tokens": 5}, "prompt"),
]


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(("path", "body", "param"), OPENAI_CASES)
def test_openai_routes_refuse_bad_input_with_400_naming_the_field(
    client: httpx.Client, path: str, body: bytes | dict[str, Any], param: str | None, streamed: bool
) -> None:
    if isinstance(body, dict):
        body = json.dumps({**body, "stream": streamed}).encode()
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    if path == "/v1/completions" and param == "prompt" and "word" in body.decode():
        max_input = client.get("/info").json()["max_input_tokens"]
        assert "tokens" in error["message"] and str(max_input) in error["message"]  # it states the counts


TGI_CASES: list[tuple[bytes | dict[str, Any], int, str | None]] = [
    (b"{bad json", 400, None),
    ({"inputs": 3}, 400, "inputs"),
    ({"parameters": {}}, 400, "inputs"),
    ({"inputs": ""}, 422, "inputs"),
    ({"inputs": "hi", "parameters": {"temperature": -1}}, 422, "temperature"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 0}}, 422, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 10_000}}, 422, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"stop": ["a"] * 5}}, 422, "stop"),
    ({"inputs": LONG_TEXT, "parameters": {"max_new_tokens": 5}}, 422, "inputs"),
]


@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
@pytest.mark.parametrize(("body", "status", "field"), TGI_CASES)
def test_tgi_routes_refuse_bad_input_in_tgi_shape(
    client: httpx.Client, path: str, body: bytes | dict[str, Any], status: int, field: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error_type"] == "validation"
    if field is not None:
        assert field in response.json()["error"]


def test_a_body_over_the_payload_limit_gets_413(client: httpx.Client) -> None:
    big = "x" * 2_100_000
    openai_reply = client.post(CHAT, json=user(big))
    assert openai_reply.status_code == 413 and openai_reply.json()["error"]["type"] == "invalid_request_error"
    tgi_reply = client.post("/generate", json={"inputs": big})
    assert tgi_reply.status_code == 413 and tgi_reply.json()["error_type"] == "payload"


def test_the_api_key_guards_every_route_but_health_and_the_demo_page(start_server: Any) -> None:
    with (
        start_server(env={"TOKENSPOUT_API_KEY": "s3cret"}) as url,
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        guarded = [
            ("POST", CHAT, user("hi")),
            ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
            ("GET", "/v1/models", None),
            ("POST", "/generate", SHORT_TGI),
            ("POST", "/generate_stream", SHORT_TGI),
            ("POST", "/", SHORT_TGI),
            ("GET", "/info", None),
            ("POST", "/tokenize", {"inputs": "hi"}),
            ("GET", "/metrics", None),
        ]
        for method, path, body in guarded:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = c.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers)
                shape = response.json()
                assert (
                    shape["error"]["type"] == "authentication_error"
                    if path.startswith("/v1")
                    else (shape["error_type"] == "authentication")
                )
            ok = c.request(method, path, json=body, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200, path


def test_cors_is_off_unless_origins_are_named(base_url: str, start_server: Any) -> None:
    origin = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(f"{base_url}{CHAT}", headers=origin).headers
    with start_server("--cors-allow-origin", "https://example.org") as url:
        allowed = httpx.options(f"{url}{CHAT}", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://example.org"


def test_each_slot_holds_its_share_of_the_context(start_server: Any) -> None:
    """1,024 cells for 4 slots: 256 each. A request that needs more is refused up front; four that
    each fill their slot run together to the end of their context and all finish with `length`."""
    with start_server("--ctx-size", "1024", "--parallel", "4") as url:
        info = httpx.get(f"{url}/info").json()
        assert info["max_total_tokens"] == 256 and info["max_input_tokens"] == 255
        too_long = httpx.post(f"{url}/v1/completions", json={"prompt": "Story:", "max_tokens": 255})
        assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
        assert "256" in too_long.json()["error"]["message"]

        def fill_slot(i: int) -> tuple[str, int, int]:
            body = {"prompt": f"Story {i}:", "ignore_eos": True}  # no max_tokens: what the slot leaves
            reply = httpx.post(f"{url}/v1/completions", json=body, timeout=300).json()
            usage = reply["usage"]
            return reply["choices"][0]["finish_reason"], usage["prompt_tokens"], usage["completion_tokens"]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(fill_slot, range(4)))
        assert all(reason == "length" and n_prompt + n_new == 256 for reason, n_prompt, n_new in outcomes)
        final = wait_until_idle(url)
        assert final["tokenspout_kv_cells_used"] == 0 and final["tokenspout_slots_free"] == 4


def test_sigterm_drains_running_streams_and_exits_zero(model_path: str) -> None:
    process, url = spawn(model_path, ["--threads", "2", "--shutdown-timeout", "30"])
    try:
        body = {"prompt": "Once", "max_tokens": 60, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            refused = httpx.post(f"{url}/generate", json=SHORT_TGI, timeout=10)
            assert refused.status_code == 503 and refused.json()["error_type"] == "unavailable"
            assert httpx.get(f"{url}/health", timeout=10).status_code == 503
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in rest[-2]  # it ran to the end
        assert process.wait(timeout=30) == 0
    finally:
        stop(process)


def test_sigterm_ends_streams_past_the_timeout_with_an_error_event(model_path: str) -> None:
    process, url = spawn(model_path, ["--threads", "2", "--shutdown-timeout", "1"])
    try:
        body = {"prompt": "Once", "max_tokens": 900, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)
            data = [line[6:] for line in lines if line.startswith("data: ")]
        assert data[-1] == "[DONE]"
        assert json.loads(data[-2])["error"]["message"] == "the server is shutting down"
        assert process.wait(timeout=30) == 0
    finally:
        stop(process)


def test_resident_memory_is_reported(base_url: str) -> None:
    assert metrics(base_url)["process_resident_memory_bytes"] > 50e6
