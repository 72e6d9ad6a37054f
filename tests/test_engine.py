"""The engine in-process on the real model, for what no HTTP request can bring about."""

from __future__ import annotations

import asyncio

import pytest

from engine import Engine, EngineConfig
from engine.errors import GenerationError
from engine.types import GenerationRequest


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
