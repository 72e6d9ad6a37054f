"""--deterministic on another weight type: a requantized copy of the model under test.

llama.cpp picks kernels by weight type (and repacks some types for the CPU's SIMD width), so the
bit-identity --deterministic promises is checked per type. The copy is made once with
``llama_model_quantize`` (``allow_requantize``, ``tests/model_variants.py``) and cached.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from bench.server import running_server
from tests import model_variants

CASES = [
    ("Name three fruits:", 8),
    ("The capital of Italy is", 40),
    ("Summarize in one sentence: " + "The river flows past the old mill and the quiet town. " * 25, 24),
    ("Count from one to five in words:", 20),
]
Trace = list[tuple[str, float]]


@pytest.fixture(scope="session")
def requantized(model_path: str) -> Callable[[str], str]:
    """``requantized("Q4_0")``: the path of a copy of the model under test with those weights."""
    return lambda weight_type: str(model_variants.requantized(Path(model_path), weight_type))


def trace(url: str, prompt: str, n: int) -> tuple[Trace, int, int]:
    """(token, logprob) of each greedy token; the prompt's tokens, and those served from cache."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = client.completions.create(
        model="m", prompt=prompt, max_tokens=n, temperature=0, logprobs=0, extra_body={"ignore_eos": True}
    )
    logprobs, usage = reply.choices[0].logprobs, reply.usage
    assert logprobs and logprobs.tokens and logprobs.token_logprobs and usage and usage.prompt_tokens_details
    cached = usage.prompt_tokens_details.cached_tokens or 0
    return list(zip(logprobs.tokens, logprobs.token_logprobs, strict=True)), usage.prompt_tokens, cached


@pytest.mark.parametrize("weight_type", ["Q4_0"])
def test_bit_identical_alone_batched_warm_and_cold(
    requantized: Callable[[str], str], weight_type: str
) -> None:
    model = requantized(weight_type)
    flags = ["--threads", "2", "--deterministic"]
    with running_server(model, flags) as url:
        alone = [trace(url, p, n) for p, n in CASES]
        # cold: the prompts share no prefix (but a BOS token the model may add)
        assert all(cached <= 1 for _, _, cached in alone)
        warm = [trace(url, p, n) for p, n in CASES]
        assert all(cached == n_prompt - 1 for _, n_prompt, cached in warm)
        assert [t for t, _, _ in warm] == [t for t, _, _ in alone]  # bit for bit, logprobs included
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            batched = list(pool.map(lambda case: trace(url, *case), CASES))
        assert [t for t, _, _ in batched] == [t for t, _, _ in alone]
        # a second turn continues the cells of the first one's answer, decoded one token at a time
        follow_ups = [
            prompt + "".join(token for token, _ in first) + " Once more:"
            for (prompt, _), (first, _, _) in zip(CASES, alone, strict=True)
        ]
        continued = [trace(url, p, 12) for p in follow_ups]
        assert all(c >= n for (_, _, c), (_, n, _) in zip(continued, alone, strict=True))
    with running_server(model, flags) as url:
        cold = [trace(url, p, 12) for p in follow_ups]
    assert all(cached <= 1 for _, _, cached in cold)
    assert [t for t, _, _ in continued] == [t for t, _, _ in cold]
