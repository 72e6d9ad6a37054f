"""Thinking models: what the second reasoning field costs per token, and whether an agent's later turns
still come from the prompt cache when the model thinks before each answer.

The thinking model is the default model's weights under DeepSeek-R1's template with its markers as
tokens (tests/model_variants.py): the prompt opens the thought, the server closes it after
``BUDGET`` tokens, and the client sends back only the answers, as clients do.
"""

from __future__ import annotations

import statistics
import time

from bench import conversation
from bench.server import running_server
from server.openai import wire as w
from server.sse import frame
from tests.model_variants import thinking_model

BUDGET = 16
NO_END_OF_TURN = {"2": -100}  # the model may not end its turn inside the thought


def _frames_per_second(both: bool, n: int = 20000) -> float:
    """Chat chunks of one reasoning token encoded per second, with ``reasoning`` beside
    ``reasoning_content`` or without it."""
    text = " token"
    started = time.perf_counter()
    for _ in range(n):
        _chunk(w.Delta(reasoning_content=text, reasoning=text) if both else w.Delta(reasoning_content=text))
    return n / (time.perf_counter() - started)


def _chunk(delta: w.Delta) -> bytes:
    # as ChatStream writes one (server/openai/adapter.py)
    return frame(w.ChatCompletionChunk("chatcmpl-0123456789abcdef", 0, "model", [w.ChunkChoice(0, delta)]))


def second_field_cost(rounds: int) -> None:
    one = [_frames_per_second(False) for _ in range(rounds)]
    two = [_frames_per_second(True) for _ in range(rounds)]
    cost = 1e6 / statistics.median(two) - 1e6 / statistics.median(one)
    sizes = [
        len(_chunk(w.Delta(reasoning_content=" token", reasoning=" token" if both else None)))
        for both in (False, True)
    ]
    print(
        f"a reasoning chunk with `reasoning` beside `reasoning_content`: +{cost:.2f} µs to encode and "
        f"+{sizes[1] - sizes[0]} bytes ({sizes[1]} in all) a token"
    )


def agent(model: str, threads: int) -> None:
    thinking = str(thinking_model(model, "deepseek-r1-distill-qwen"))
    flags = ["--threads", str(threads), "--reasoning-budget", str(BUDGET)]
    with running_server(thinking, flags) as url:
        turns = conversation.agent_conversation(url, extra={"logit_bias": NO_END_OF_TURN})
    for i, turn in enumerate(turns, 1):
        print(
            f"turn {i}: TTFT {turn.ttft * 1000:7.0f} ms, {turn.prompt_tokens} prompt tokens,"
            f" {turn.cached_tokens} cached"
        )
    later = turns[1:]
    ratio = statistics.median(t.ttft for t in later) / turns[0].ttft
    share = sum(t.cached_tokens for t in later) / sum(t.prompt_tokens for t in later)
    print(
        f"thinking template: median TTFT of turns 2+ / turn 1: {ratio:.3f} (goal <= 0.05);"
        f" prompt tokens from cache: {share:.0%}\n"
    )


def report(model: str, threads: int, rounds: int) -> None:
    second_field_cost(rounds)
    agent(model, threads)
