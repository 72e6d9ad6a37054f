"""Speculative decoding in the engine, in-process on the real model: what the scheduler does with a
draft, step by step, where no HTTP request can look (the cells a slot keeps, a finish inside an
accepted draft, a cancellation between two verified drafts).

Both engines use ``--deterministic``'s context shape, where a row's logits do not depend on the rest of
the batch: then verification rows give exactly the plain loop's logits, and any difference in text is
the scheduler's doing. (The fast shape may round a verification row's logits differently from a lone
decode row, as it does a batched one.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bench.spec import SOURCE
from engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from engine.engine import DETERMINISTIC_WEIGHTS
from engine.handle import RequestHandle
from engine.llama import Model, init_backend
from engine.scheduler import Scheduler, Sequence
from engine.speculation import OFF, SpecConfig
from engine.types import Completion, TokenEvent
from tests.model_variants import requantized

EDIT = (
    f"Here is a Python module:\n\n```python\n{SOURCE}```\n\n"
    "The same module with `Inventory` renamed to `Warehouse`:\n\n```python\n"
)

Scenario = Callable[[Engine], Awaitable[None]]


@pytest.fixture(scope="module")
def exact_model(model_path: str) -> str:
    """The model under test where ``--deterministic`` was checked bit-identical for its weights, else a
    Q8_0 copy of it: these tests compare verification rows with lone decode rows bit for bit, which
    holds only for those weights (README, "Deterministic mode": Qwen's Q4_K_M rows differ there)."""
    init_backend()
    model = Model(Path(model_path))
    try:
        weights = model.weight_type
    finally:
        model.close()
    return model_path if weights in DETERMINISTIC_WEIGHTS else str(requantized(Path(model_path), "Q8_0"))


def run(model_path: str, spec: SpecConfig, scenario: Scenario) -> None:
    async def main() -> None:
        engine = Engine(EngineConfig(model_path=model_path, n_threads=2, deterministic=True, spec=spec))
        engine.start()
        try:
            await scenario(engine)
        finally:
            engine.close()

    asyncio.run(main())


def greedy(engine: Engine, prompt: str, max_tokens: int, stop: tuple[str, ...] = ()) -> GenerationRequest:
    tokens = tuple(engine.tokenize(prompt))
    sampling = SamplingParams(temperature=0)
    return GenerationRequest(tokens, max_tokens, sampling, stop=stop, logprobs=True, ignore_eos=True)


def trace(completion: Completion) -> list[tuple[int, str, float | None]]:
    return [(t.token_id, t.text, t.logprob) for t in completion.tokens]


@pytest.fixture(scope="module")
def plain_edit(exact_model: str) -> Completion:
    """The plain loop's answer to the editing prompt (120 tokens, ignoring its end)."""
    result: list[Completion] = []

    async def scenario(engine: Engine) -> None:
        request = greedy(engine, EDIT, 120)
        result.append(await engine.submit(request).collect())

    run(exact_model, OFF, scenario)
    return result[0]


def test_a_finish_inside_an_accepted_draft_stops_there_and_keeps_exactly_the_cells_of_its_tokens(
    exact_model: str, plain_edit: Completion
) -> None:
    """max_tokens at every third length from 40 to 70 and stop strings taken from the plain answer: the
    speculative engine (whose drafts are mostly accepted here: checked) gives the plain loop's tokens,
    logprobs, finish reason and text; and the slot keeps the prompt's and answer's cells but the last
    token's (as the plain loop leaves it), proved by what the prompt cache reuses next."""
    plain = trace(plain_edit)
    words = plain_edit.text.split()
    stops = [w for w in words[10:30] if len(w) > 6][:3]
    assert stops, plain_edit.text

    async def scenario(engine: Engine) -> None:
        for n in range(40, 71, 3):
            request = greedy(engine, EDIT, n)
            got = await engine.submit(request).collect()
            assert trace(got) == plain[:n], n
            assert got.finish.reason.value == "length"
            cells = await engine.kv_cells()
            assert cells.used == 0 and cells.cached == len(request.prompt_tokens) + n - 1, n
        for stop in stops:
            request = greedy(engine, EDIT, 120, stop=(stop,))
            got = await engine.submit(request).collect()
            assert got.finish.reason.value == "stop_sequence"
            assert got.text == plain_edit.text[: plain_edit.text.index(stop)], stop
            # the same tokens and logprobs (a token's text may be held back while a stop string could
            # be starting, so the texts of single events differ; the whole text is compared above)
            ids = [(t, lp) for t, _, lp in trace(got)]
            assert ids == [(t, lp) for t, _, lp in plain[: len(ids)]], stop
        # the stream holds exactly the recorded cells: a continuation reuses them all
        follow = greedy(engine, EDIT + plain_edit.text[:80], 8)
        again = await engine.submit(follow).collect()
        assert again.finish.usage.cached_tokens >= len(request.prompt_tokens)
        stats = engine.stats()
        assert stats.draft_tokens_accepted["lookup"] > stats.draft_tokens["lookup"] / 2 > 50

    run(exact_model, SpecConfig(), scenario)


def test_a_cancellation_between_verified_drafts_frees_the_slot_and_keeps_exact_cells(
    exact_model: str, plain_edit: Completion
) -> None:
    async def scenario(engine: Engine) -> None:
        request = greedy(engine, EDIT, 120)
        handle = engine.submit(request)
        seen = await first_tokens(handle, 60)
        handle.cancel()
        # the probe queues behind the cancellation: its answer comes after the slot was freed
        cells = await engine.kv_cells()
        assert engine.stats().free_slots == 4
        assert seen == [t for t, _, _ in trace(plain_edit)[:60]]
        n_prompt = len(request.prompt_tokens)
        assert cells.used == 0 and n_prompt + 59 <= cells.cached < n_prompt + 120
        # whatever the slot kept is the exact prefix: the same request again gives the plain answer
        again = await engine.submit(request).collect()
        assert again.finish.usage.cached_tokens == len(request.prompt_tokens) - 1
        assert trace(again) == trace(plain_edit)
        assert sum(engine.stats().draft_tokens_accepted.values()) > 0

    run(exact_model, SpecConfig(), scenario)


async def first_tokens(handle: RequestHandle, n: int) -> list[int]:
    seen: list[int] = []
    async for event in handle:
        assert isinstance(event, TokenEvent)
        seen.append(event.token_id)
        if len(seen) == n:
            break
    return seen


def test_alone_every_verification_step_fills_whole_blocks_of_rows(
    exact_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request alone drafts so that its token and its draft fill whole blocks of 4 rows (on a CPU a
    row past a block costs about a one-row step); with blocks of 1 the same request verifies steps of
    5, 9, 17... rows, so the cut is what keeps the steps whole."""
    rows: list[int] = []
    verify = Scheduler._verify

    def spy(self: Scheduler, seq: Sequence) -> None:
        rows.append(1 + len(seq.draft))
        verify(self, seq)

    monkeypatch.setattr(Scheduler, "_verify", spy)

    async def scenario(engine: Engine) -> None:
        await engine.submit(greedy(engine, EDIT, 120)).collect()

    run(exact_model, SpecConfig(), scenario)
    assert len(rows) >= 3 and all(n % 4 == 0 for n in rows), rows
    rows.clear()
    run(exact_model, SpecConfig(row_block=1), scenario)
    assert any(n % 4 for n in rows), rows
