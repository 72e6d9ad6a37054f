"""TGI-compatible routes with huggingface_hub's InferenceClient, the client TGI users already have."""

from __future__ import annotations

import math

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError

from tests.helpers import metrics

PROMPT = "The three most famous painters of the Renaissance are"


def hub(base_url: str) -> InferenceClient:
    return InferenceClient(base_url=base_url, timeout=120)


def test_generate_with_details_reports_real_logprobs(base_url: str) -> None:
    out = hub(base_url).text_generation(PROMPT, max_new_tokens=20, details=True, top_n_tokens=3)
    details = out.details
    assert details is not None and out.generated_text
    assert details.finish_reason in ("length", "eos_token", "stop_sequence")
    assert details.generated_tokens == len(details.tokens) <= 20
    assert "".join(t.text for t in details.tokens) == out.generated_text
    logprobs = [t.logprob for t in details.tokens]
    assert all(lp is not None and lp <= 0 for lp in logprobs)
    assert len({round(lp or 0, 4) for lp in logprobs}) > 3  # real values, not a constant
    assert details.top_tokens is not None
    for token, top in zip(details.tokens, details.top_tokens, strict=True):
        # huggingface_hub leaves these nested entries as plain dicts
        best = top[0] if isinstance(top[0], dict) else vars(top[0])
        # greedy: the chosen token is the most likely one, and the alternatives are a distribution
        assert best["id"] == token.id and math.isclose(best["logprob"], token.logprob or 0, abs_tol=1e-4)
        assert sum(math.exp(t["logprob"] if isinstance(t, dict) else t.logprob) for t in top) <= 1.0001


def test_stream_format_and_greedy_stream_equals_generate(base_url: str) -> None:
    client = hub(base_url)
    whole = client.text_generation(PROMPT, max_new_tokens=30)
    events = list(client.text_generation(PROMPT, max_new_tokens=30, stream=True, details=True))
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text == whole
    assert "".join(e.token.text for e in events) == last.generated_text
    assert last.details is not None and last.details.generated_tokens == len(events)
    assert last.details.input_length > 0
    assert [e.index for e in events] == list(range(1, len(events) + 1))
    assert all(e.token.logprob is not None and e.token.logprob <= 0 for e in events)


def test_truncate_keeps_the_last_tokens_of_an_input_longer_than_the_context(base_url: str) -> None:
    """With TGI's ``truncate``, an input far past the context (refused without it) is cut to its last
    tokens: what comes out depends on them alone, as for its own ending."""
    client = hub(base_url)
    ending = " ".join(["Once upon a time, in a quiet village by the sea, there lived"] * 5)
    long_input = "All work and no play makes Jack a dull boy. " * 20_000 + ending  # ~880 KB
    with pytest.raises(ValidationError, match="inputs"):
        client.text_generation(long_input, max_new_tokens=12)
    outs = [
        list(client.text_generation(text, max_new_tokens=12, truncate=48, stream=True, details=True))[-1]
        for text in (long_input, ending)
    ]
    assert all(out.details is not None and out.details.input_length == 48 for out in outs)
    assert outs[0].generated_text == outs[1].generated_text


def test_compat_route_picks_the_mode_from_the_body(client: httpx.Client) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8}}
    whole = client.post("/", json=body)
    assert whole.status_code == 200 and isinstance(whole.json(), list)
    text = whole.json()[0]["generated_text"]
    with client.stream("POST", "/", json={**body, "stream": True}) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        data = [line for line in streamed.iter_lines() if line.startswith("data:")]
    assert '"generated_text":' + httpx.Response(200, json=text).text in data[-1]


def test_return_full_text_stop_sequences_and_seeded_sampling(base_url: str) -> None:
    client = hub(base_url)
    full = client.text_generation(PROMPT, max_new_tokens=5, return_full_text=True)
    assert full.startswith(PROMPT)
    plain = client.text_generation(PROMPT, max_new_tokens=30)
    stop = plain.split()[2]
    stopped = client.text_generation(PROMPT, max_new_tokens=30, stop=[stop], details=True)
    assert stopped.details is not None and stopped.details.finish_reason == "stop_sequence"
    assert stop not in stopped.generated_text
    a = client.text_generation(PROMPT, max_new_tokens=20, do_sample=True, temperature=1.3, seed=7)
    b = client.text_generation(PROMPT, max_new_tokens=20, do_sample=True, temperature=1.3, seed=7)
    assert a == b  # a seed makes sampling repeatable


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"max_new_tokens": 100_000}, "max_new_tokens"),  # more than any slot holds
    ],
)
def test_invalid_parameters_give_422_validation_errors(
    base_url: str, client: httpx.Client, parameters: dict[str, object], field: str
) -> None:
    response = client.post("/generate", json={"inputs": "Hi", "parameters": parameters})
    assert response.status_code == 422
    body = response.json()
    assert body["error_type"] == "validation" and f"`{field}`" in body["error"]
    with pytest.raises(ValidationError):
        hub(base_url).text_generation("Hi", **parameters)  # type: ignore[call-overload]


def test_empty_inputs_and_malformed_json(client: httpx.Client) -> None:
    empty = client.post("/generate", json={"inputs": ""})
    assert empty.status_code == 422 and "`inputs`" in empty.json()["error"]
    bad = client.post("/generate", content=b'{"inputs": ')
    assert bad.status_code == 400 and bad.json()["error_type"] == "validation"
    wrong_type = client.post("/generate", json={"inputs": 3})
    assert wrong_type.status_code == 400 and "inputs" in wrong_type.json()["error"]


def test_info_health_and_tokenize(client: httpx.Client) -> None:
    info = client.get("/info").json()
    assert info["max_concurrent_requests"] == 128
    # --ctx-size auto: a slot holds the model's trained context (8,192 for the default model) within
    # the KV budget, in whole blocks of 256 cells
    assert info["max_total_tokens"] % 256 == 0 and info["max_total_tokens"] >= 2048
    assert info["max_input_tokens"] == info["max_total_tokens"] - 1
    assert info["max_stop_sequences"] == 4 and info["max_best_of"] == 1 and info["model_id"]
    assert client.get("/health").status_code == 200
    text = "Hello 世界"
    tokens = client.post("/tokenize", json={"inputs": text}).json()
    assert tokens and all(set(t) == {"id", "text", "start", "stop"} for t in tokens)
    assert "".join(text[t["start"] : t["stop"]] for t in tokens if t["start"] < t["stop"]).startswith("Hello")
    assert tokens[-1]["stop"] == len(text)


def test_metrics_use_tgi_names_and_move_with_traffic(base_url: str) -> None:
    before = metrics(base_url)
    hub(base_url).text_generation("Hi", max_new_tokens=3)
    httpx.post(f"{base_url}/generate", json={"inputs": "Hi", "parameters": {"top_k": 0}})
    after = metrics(base_url)
    assert after["tgi_request_count"] == before["tgi_request_count"] + 2
    assert after["tgi_request_success"] == before["tgi_request_success"] + 1
    failures = "tgi_request_failure{err=validation}"
    assert after[failures] == before.get(failures, 0) + 1
    assert after["tgi_request_generated_tokens_count"] == before["tgi_request_generated_tokens_count"] + 1
    for name in (
        "tgi_queue_size",
        "tgi_batch_current_size",
        "tgi_request_input_length_sum",
        "tgi_request_queue_duration_count",
        "tgi_request_duration_count",
        "tokenspout_time_to_first_token_seconds_count",
        "tokenspout_decode_tokens_per_second_count",
    ):
        assert name in after


def test_metrics_declare_the_types_of_the_samples_under_them(base_url: str) -> None:
    """Every sample stands under a TYPE line of its own name (a histogram's, for its _bucket, _sum and
    _count): a scraper that reads the types (Prometheus' metadata, OpenMetrics parsers) sees our
    counters as counters, and no sample goes without its type."""
    hub(base_url).text_generation("Hi", max_new_tokens=2)
    lines = httpx.get(f"{base_url}/metrics", timeout=30).text.splitlines()
    declared = dict(line.split()[2:4] for line in lines if line.startswith("# TYPE "))

    def type_of(name: str) -> str | None:
        for suffix in ("_bucket", "_sum", "_count"):
            if declared.get(name.removesuffix(suffix)) == "histogram":
                return "histogram"
        return declared.get(name)

    for line in lines:
        if line and not line.startswith("#"):
            name = line.partition("{")[0].partition(" ")[0]
            assert type_of(name) is not None, f"{name} has no TYPE line of its name"
    assert declared["tokenspout_decode_steps_total"] == "counter"
    assert declared["tokenspout_spec_draft_tokens_total"] == "counter"
    assert declared["tgi_request_count"] == "untyped"  # TGI's name, which no counter family can write
    assert metrics(base_url)["tokenspout_decode_steps_total"] > 0
