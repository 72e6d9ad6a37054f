"""The engine in-process on the real model, for what no HTTP request can bring about."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import llama_cpp as C
import pytest

from engine import Engine, EngineConfig
from engine.errors import GenerationError
from engine.llama import FAST, Context, Model
from engine.sampling import Sampler
from engine.types import GenerationRequest, SamplingParams


def test_a_failing_decode_fails_its_requests_and_the_engine_goes_on(model_path: str) -> None:
    """llama_decode failing (out of memory, a backend error) is injected once, on the third step: after
    the prompt's cells were written (two steps: all but its last token, then the last one)."""

    async def scenario() -> None:
        engine = Engine(EngineConfig(model_path=model_path, n_threads=2))
        real_decode = engine.context.decode
        injected = iter([0, 0, -3])
        engine.context.decode = lambda: next(injected, None) or real_decode()  # type: ignore[method-assign]
        engine.start()
        try:
            request = GenerationRequest(tuple(engine.tokenize("Once upon a time")), max_tokens=5)
            with pytest.raises(GenerationError, match="llama_decode failed with code -3"):
                await engine.submit(request).collect()
            after = await engine.submit(request).collect()
            assert len(after.tokens) == 5 and after.text
            # the failed request's cells were all dropped: nothing of them was reused
            assert after.finish.usage.cached_tokens == 0
            cells = await engine.kv_cells()
            assert engine.stats().free_slots == 4 and cells.used == 0
            assert cells.cached == len(request.prompt_tokens) + 4  # the last sampled token was not decoded
        finally:
            engine.close()

    asyncio.run(scenario())


def test_greedy_without_a_chain_picks_what_llama_cpps_greedy_sampler_picks(model_path: str) -> None:
    """Plain greedy sampling is an argmax over the logits, not llama.cpp's chain: the same token,
    on the model's real logits and on a tie for the top (the first of the equal maxima)."""
    model = Model(Path(model_path))
    context = Context(model, n_ctx=256, n_seq=1, n_batch=64, shape=FAST, n_threads=2)
    reference = C.llama_sampler_init_greedy()
    ours = Sampler(SamplingParams(temperature=0), model.n_vocab)
    try:
        prompt = model.tokenize("Once upon a time", add_special=True)
        for position, token in enumerate(prompt):
            context.batch.add(token, position, 0, position == len(prompt) - 1)
        context.batch.seal()
        assert context.decode() == 0
        row = len(prompt) - 1
        logits = context.logits(row)

        def llama_cpps() -> int:
            return int(C.llama_sampler_sample(reference, context.ptr, row))

        assert ours.sample(context.ptr, row, logits) == llama_cpps()
        logits[[7, 4000]] = logits.max() + 1.0  # the view is the context's own logits: llama.cpp sees it
        assert ours.sample(context.ptr, row, logits) == llama_cpps() == 7
    finally:
        ours.close()
        C.llama_sampler_free(reference)
        context.close()
        model.close()


def test_the_tail_of_a_long_text_tokenizes_as_the_end_of_the_whole(model_path: str) -> None:
    """TGI's ``truncate`` keeps an input's last tokens; they come from a tail of a long text (the
    whole of it is tokenized only to check here), and from the whole text when no word boundary
    is in reach."""
    model = Model(Path(model_path))
    tokenized: list[int] = []  # the length of each text the tail path tokenized
    whole_tokenize = model.tokenize

    def spy(text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        tokenized.append(len(text))
        return whole_tokenize(text, add_special=add_special, parse_special=parse_special)

    rng = random.Random(7)
    words = ["the", "sea", "naïve", "café", "東京", "🙂", "42", "3.14", "it's", "<|im_end|>", "x" * 30]
    gaps = [" ", " ", " ", "  ", "\n", "\n\n", "\t", ", ", ". "]
    prose = "".join(rng.choice(words) + rng.choice(gaps) for _ in range(40_000))
    cases = {
        "repeated sentence": ("All work and no play makes Jack a dull boy. " * 5_000, True),
        "mixed prose": (prose, True),
        "no word boundary": ("a" * 200_000, False),
        "short": ("Once upon a time", False),
    }
    model.tokenize = spy  # type: ignore[method-assign]
    try:
        for name, (text, from_tail) in cases.items():
            expected = whole_tokenize(text, add_special=True)
            for n in (1, 64, 300):
                tokenized.clear()
                assert model.tokenize_tail(text, n) == expected[-n:], (name, n)
                assert (max(tokenized) < len(text)) == from_tail, (name, n, tokenized)
    finally:
        model.close()
