"""Speculative decoding over HTTP: a server started with --spec against one started with --no-spec.

Under --deterministic a row's logits do not depend on the batch, so verification rows give exactly the
plain loop's logits: every token and logprob must match bit for bit, alone and batched, with a
constraint, a stop string, a seed. Each test also checks from /metrics that drafts were accepted, so
that it exercised speculation and cannot pass by drafting nothing.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bench.spec import EMAIL, SEND_EMAIL, SOURCE
from tests.conftest import ServerFactory
from tests.helpers import metrics, spec_tokens, wait_until_idle

EDIT = (
    f"Here is a Python module:\n\n```python\n{SOURCE}```\n\n"
    "The same module with `Inventory` renamed to `Warehouse`:\n\n```python\n"
)
QUOTE = f"Email to forward:\n{EMAIL}\n\nThe same email, word for word:\n"
PROSE = "Once upon a time, in a small village by the sea, there lived"
Trace = list[tuple[str, float]]

# --deterministic's context shape (Q8_0 cells, flash attention, micro-batches of 32) makes draft rows
# slow on CPU, and these tests need it for bit-identity: they take minutes on a busy 2-core machine.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def plain_url(start_server: ServerFactory, bit_identity: None) -> Iterator[str]:
    with start_server("--deterministic", "--no-spec") as url:
        yield url


@pytest.fixture(scope="module")
def spec_url(start_server: ServerFactory, bit_identity: None) -> Iterator[str]:
    with start_server("--deterministic", "--spec", "--spec-pool-tokens", "262144") as url:
        yield url


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def complete(url: str, prompt: str, n: int, **extra: Any) -> tuple[Trace, str, str]:
    """(token, logprob) of each token, the text and the finish reason of a completion."""
    body: dict[str, Any] = {"temperature": 0, **extra}
    reply = sdk(url).completions.create(model="m", prompt=prompt, max_tokens=n, logprobs=0, **body)
    choice = reply.choices[0]
    assert choice.logprobs and choice.logprobs.tokens and choice.logprobs.token_logprobs
    trace = list(zip(choice.logprobs.tokens, choice.logprobs.token_logprobs, strict=True))
    return trace, choice.text, str(choice.finish_reason)


def accepted(url: str, source: str | None = None) -> float:
    """Draft tokens the model agreed with so far: of one draft source, or of all."""
    return spec_tokens(metrics(url), "accepted", source)


def test_greedy_tokens_and_logprobs_are_the_plain_loops_bit_for_bit(plain_url: str, spec_url: str) -> None:
    before = accepted(spec_url)
    for prompt, n in ((EDIT, 80), (QUOTE, 50), (PROSE, 30)):
        assert complete(spec_url, prompt, n) == complete(plain_url, prompt, n)
    m = metrics(spec_url)
    assert spec_tokens(m, "accepted") - before > 40
    assert spec_tokens(m, "draft") >= spec_tokens(m, "accepted")
    assert spec_tokens(metrics(plain_url), "draft") == 0


def test_stop_strings_and_max_tokens_inside_drafts_end_where_the_plain_loop_ends(
    plain_url: str, spec_url: str
) -> None:
    _, text, _ = complete(plain_url, EDIT, 80)
    stops = [w for w in text.split()[10:30] if len(w) > 6][:2]
    assert stops
    for stop in stops:
        assert complete(spec_url, EDIT, 80, stop=[stop]) == complete(plain_url, EDIT, 80, stop=[stop])
    for n in (33, 57):
        assert complete(spec_url, EDIT, n) == complete(plain_url, EDIT, n)


def _batch(url: str, *, together: bool = True) -> list[object]:
    """Four different requests, at once or one after another: an edit, a quote with a stop string,
    prose, a constrained tool call that quotes its prompt (grammar-forced drafts and prompt lookup)."""
    tool = {
        "messages": [{"role": "user", "content": f"Send this email to sam@example.com:\n\n{EMAIL}"}],
        "tools": [SEND_EMAIL],
        "tool_choice": {"type": "function", "function": {"name": "send_email"}},
        "max_tokens": 120,
        "temperature": 0,
        "model": "m",
    }

    def tool_call() -> object:
        reply = httpx.post(f"{url}/v1/chat/completions", json=tool, timeout=300).json()
        return reply["choices"][0]["message"]["tool_calls"][0]["function"]

    jobs = [
        lambda: complete(url, EDIT, 160),
        lambda: complete(url, QUOTE, 80, stop=["Maria"]),
        lambda: complete(url, PROSE, 60),
        tool_call,
    ]
    with concurrent.futures.ThreadPoolExecutor(4 if together else 1) as pool:
        return list(pool.map(lambda job: job(), jobs))


def test_batched_beside_others_and_constrained_is_the_plain_loop_alone(plain_url: str, spec_url: str) -> None:
    before, forced = accepted(spec_url), accepted(spec_url, "grammar")
    assert _batch(spec_url) == _batch(plain_url, together=False)
    assert accepted(spec_url) - before > 50
    assert accepted(spec_url, "grammar") > forced  # the tool call's name and keys, forced by its grammar


def test_a_seeded_sampled_request_is_reproducible_and_the_plain_loops(plain_url: str, spec_url: str) -> None:
    """The verification samples each row with the request's own sampler chain, one call per emitted
    token, so its random stream is the plain loop's."""
    before = accepted(spec_url)
    sampled = {"temperature": 0.7, "top_p": 0.95, "seed": 1234}
    first = complete(spec_url, EDIT, 160, **sampled)
    assert complete(spec_url, EDIT, 160, **sampled) == first
    assert complete(plain_url, EDIT, 160, **sampled) == first
    assert accepted(spec_url) - before > 20


def test_a_cancelled_stream_frees_its_slot_in_the_middle_of_verified_drafts(
    plain_url: str, spec_url: str
) -> None:
    before = accepted(spec_url)
    body = {"model": "m", "prompt": EDIT, "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{spec_url}/v1/completions", json=body, timeout=120) as response:
        events = 0
        for line in response.iter_lines():
            events += line.startswith("data: ")
            if events == 80:
                break
    m = wait_until_idle(spec_url)
    assert m["tokenspout_slots_free"] == 4 and m["tokenspout_kv_cells_used"] == 0
    assert accepted(spec_url) > before
    # what the slot kept is an exact prefix: the same request now is the plain loop's, from the cache
    assert complete(spec_url, EDIT, 100) == complete(plain_url, EDIT, 100)


def test_a_request_sent_again_is_drafted_from_what_the_first_one_wrote(plain_url: str, spec_url: str) -> None:
    """The shared pool: prose copies nothing from its prompt, so prompt lookup drafts little; sent a
    second time (a retry, a regeneration), the answer the first one wrote is drafted and accepted,
    and both are the plain loop's bit for bit."""
    prompt = "The tide came in slowly over the flats, and the old fisherman"
    before = accepted(spec_url, "pool")
    first = complete(spec_url, prompt, 60)
    assert accepted(spec_url, "pool") == before  # nothing earlier wrote this
    second = complete(spec_url, prompt, 60)
    assert first == second == complete(plain_url, prompt, 60)
    assert accepted(spec_url, "pool") - before >= 45


QWEN = Path(
    os.environ.get("TOKENSPOUT_QWEN_MODEL")
    or Path.home() / ".cache/tokenspout/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
)


@pytest.mark.skipif(not QWEN.exists(), reason=f"the Qwen model is not at {QWEN} (TOKENSPOUT_QWEN_MODEL)")
def test_the_qwen_model_writes_the_same_greedy_text_with_and_without_speculation() -> None:
    """Qwen2.5-Coder-0.5B (Q4_K_M) in the fast shape, one request at a time, chat: the same text for an
    edit, sent twice (with no pool, a request's drafts are its own: the same both times). Its weights are
    not batch-invariant even with --deterministic, so this is the text, not the bits; and a forced tool
    call quoting the request, whose grammar-forced drafts a plain loop never makes, is checked for what
    it says, not compared: its subject ends at a near-tie (`",` against ` Move`, 0.09 apart in
    log-probability), which a verification row's rounding may tip. Its body is copied from the prompt
    by prompt lookup, whose drafts stop where the grammar must close the string: without that cut, this
    call drafted 33 tokens it could not use, most of them past the quote's end, into the prompt's
    template tokens."""
    from bench.server import running_server

    rename = "Rename `Inventory` to `Warehouse`; whole code."
    edit = {"messages": [{"role": "user", "content": f"```python\n{SOURCE}```\n{rename}"}], "max_tokens": 160}
    quote = [{"role": "user", "content": f"Send this email to sam@example.com, word for word:\n\n{EMAIL}"}]
    forced = {"type": "function", "function": {"name": "send_email"}}
    call = {"messages": quote, "max_tokens": 120, "tools": [SEND_EMAIL], "tool_choice": forced}
    edits, gained = [], 0.0
    for flags in (["--no-spec"], ["--spec"]):
        with running_server(str(QWEN), ["--threads", "2", "--parallel", "1", *flags]) as url:
            edits.append([_message(url, edit) for _ in range(2)])
            before = metrics(url)
            _, [(name, arguments)] = _message(url, call)
            assert name == "send_email" and json.loads(arguments)["to"] == "sam@example.com"
            assert "send your slides to Maria by Wednesday evening" in json.loads(arguments)["body"]
            after = metrics(url)
            copied = spec_tokens(after, "accepted", "lookup") - spec_tokens(before, "accepted", "lookup")
            wasted = spec_tokens(after, "draft", "lookup") - spec_tokens(before, "draft", "lookup") - copied
            assert flags == ["--no-spec"] or (copied > 40 and wasted < 20), (copied, wasted)
            gained = spec_tokens(after, "accepted")
    assert edits[0] == edits[1]
    assert gained > 100


def _message(url: str, body: dict[str, Any]) -> tuple[str | None, list[tuple[str, str]]]:
    """The answer's text and its calls' names and arguments (call ids are random)."""
    reply = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "m", "temperature": 0, **body}, timeout=600
    )
    message = reply.json()["choices"][0]["message"]
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
    return message["content"], calls
