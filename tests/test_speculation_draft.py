"""A draft model (``--draft-model``): a Q4_0 copy of the model under test drafts for it.

The start-up check refuses a draft of another vocabulary. Then, as in tests/test_speculation_server.py,
both the plain server and the one with a draft model run ``--deterministic``'s context shape (for the
target: the draft model's own context is always the fast one, which changes its guesses at most), where
a row's logits do not depend on the batch: every token and logprob must be the plain loop's, bit for
bit, alone and batched, with a stop string, a max_tokens inside a draft, a seed. Each test checks from
/metrics that drafts were accepted, so that it cannot pass by drafting nothing. In-process tests look
where HTTP cannot: the cells each draft slot holds, after a finish inside a draft and a cancellation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import httpx
import pytest

from engine import Engine, EngineConfig
from engine.drafter import vocabulary_difference
from engine.llama import Vocabulary
from engine.scheduler import Probe
from engine.speculation import OFF, SpecConfig
from engine.types import Completion
from models import QWEN_CODER, ensure_model
from tests.conftest import ServerFactory
from tests.helpers import metrics, spec_tokens, wait_until_idle
from tests.model_variants import requantized
from tests.test_speculation_engine import first_tokens, greedy, trace
from tests.test_speculation_server import EDIT, PROSE, QUOTE, complete

# Draft rows in --deterministic's shape are slow on CPU: minutes on a busy 2-core machine.
pytestmark = pytest.mark.timeout(1800)

# 2,048 cells per slot: the editing prompt and its answer fit, and two contexts' KV stay small. One
# thread: on a 2-core machine shared with other runs, two llama.cpp threads spin-waiting for each other
# were measured 10x slower than one (a 737-token prefill: 67 s against 6 s).
FLAGS = ("--ctx-size", "8192", "--threads", "1")
# A draft model that drafts even its unsure guesses: a copy of the model under test is so often right
# with the default threshold that rejected draft tokens (whose cells both contexts must drop) are rare.
# And rows priced free, so that requests beside others draft whatever their drafts' yield.
UNSURE = ("--draft-p-min", "0", "--spec-row-cost", "0")


@pytest.fixture(scope="module")
def draft_path(model_path: str) -> str:
    """A Q4_0 copy of the model under test: the same vocabulary, other weights."""
    return str(requantized(Path(model_path), "Q4_0"))


# -- the start-up check -----------------------------------------------------------------------------
def tokenspout(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "server", "serve", "--port", "0", "--threads", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_a_draft_model_of_another_vocabulary_is_refused_at_start_up(model_path: str) -> None:
    qwen = ensure_model(QWEN_CODER)
    result = tokenspout("--model", model_path, "--draft-model", str(qwen), "--parallel", "1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if "vocabulary" in line]
    assert error, result.stderr
    assert str(qwen) in error[0] and model_path in error[0], error[0]
    assert "151936 tokens" in error[0]


def test_a_missing_draft_model_is_a_one_line_error(tmp_path: Path) -> None:
    result = tokenspout("--draft-model", str(tmp_path / "nope.gguf"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: model file not found: {tmp_path / 'nope.gguf'}"


def test_vocabularies_differing_in_size_or_special_tokens_are_told_apart() -> None:
    base = Vocabulary(kind=2, n_tokens=100, bos=1, eos=2, eog=frozenset({2}), add_bos=False, add_eos=False)
    assert vocabulary_difference(base, base) is None
    other_size = Vocabulary(2, 101, 1, 2, frozenset({2}), False, False)
    assert vocabulary_difference(base, other_size) == "101 tokens against the target's 100"
    other_end = Vocabulary(2, 100, 1, 2, frozenset({2, 5}), False, False)
    assert vocabulary_difference(base, other_end) == "eog [2, 5] against the target's [2]"


# -- over HTTP --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_url(start_server: ServerFactory, bit_identity: None) -> Iterator[str]:
    with start_server("--deterministic", "--no-spec", *FLAGS) as url:
        yield url


@pytest.fixture(scope="module")
def draft_url(start_server: ServerFactory, bit_identity: None, draft_path: str) -> Iterator[str]:
    with start_server("--deterministic", "--draft-model", draft_path, *UNSURE, *FLAGS) as url:
        yield url


def accepted(url: str) -> float:
    """Draft tokens the model agreed with so far (all the draft model's: these servers run --no-spec)."""
    return spec_tokens(metrics(url), "accepted", "draft_model")


def test_greedy_tokens_and_logprobs_are_the_plain_loops_with_a_draft_model(
    plain_url: str, draft_url: str
) -> None:
    before = metrics(draft_url)
    for prompt, n in ((EDIT, 60), (QUOTE, 40), (PROSE, 40)):
        assert complete(draft_url, prompt, n) == complete(plain_url, prompt, n)
    after = metrics(draft_url)
    drafted = spec_tokens(after, "draft", "draft_model") - spec_tokens(before, "draft", "draft_model")
    gained = spec_tokens(after, "accepted", "draft_model") - spec_tokens(before, "accepted", "draft_model")
    assert drafted > gained > 40  # some were rejected
    assert spec_tokens(after, "draft") == spec_tokens(
        after, "draft", "draft_model"
    )  # --no-spec: no other source


def test_stop_strings_and_max_tokens_inside_drafts_end_where_the_plain_loop_ends(
    plain_url: str, draft_url: str
) -> None:
    before = accepted(draft_url)
    _, text, _ = complete(plain_url, EDIT, 60)
    stops = [w for w in text.split()[8:30] if len(w) > 6][:2]
    assert stops, text
    for stop in stops:
        assert complete(draft_url, EDIT, 60, stop=[stop]) == complete(plain_url, EDIT, 60, stop=[stop])
    for n in (29, 43):
        assert complete(draft_url, EDIT, n) == complete(plain_url, EDIT, n)
    assert accepted(draft_url) - before > 40


def _together(url: str, *, at_once: bool) -> list[object]:
    """Three requests, at once or one after another: an edit, a quote with a stop string, prose."""
    jobs: list[Callable[[], object]] = [
        lambda: complete(url, EDIT, 70),
        lambda: complete(url, QUOTE, 50, stop=["Maria"]),
        lambda: complete(url, PROSE, 40),
    ]
    with concurrent.futures.ThreadPoolExecutor(3 if at_once else 1) as pool:
        return list(pool.map(lambda job: job(), jobs))


def test_concurrent_requests_drafting_together_are_the_plain_loop_alone(
    plain_url: str, draft_url: str
) -> None:
    before = accepted(draft_url)
    assert _together(draft_url, at_once=True) == _together(plain_url, at_once=False)
    assert accepted(draft_url) - before > 30


def test_a_seeded_sampled_request_is_reproducible_and_the_plain_loops(plain_url: str, draft_url: str) -> None:
    """Each position is sampled with the request's own chain, one call per emitted token, and a draft
    token is kept only when the sample equals it: the random stream is the plain loop's."""
    sampled = {"temperature": 0.7, "top_p": 0.95, "seed": 1234}
    before = accepted(draft_url)
    first = complete(draft_url, EDIT, 60, **sampled)
    assert complete(draft_url, EDIT, 60, **sampled) == first
    assert complete(plain_url, EDIT, 60, **sampled) == first
    assert accepted(draft_url) - before > 10


def test_a_cancelled_stream_frees_its_slot_in_the_middle_of_verified_drafts(
    plain_url: str, draft_url: str
) -> None:
    before = accepted(draft_url)
    body = {"model": "m", "prompt": EDIT, "max_tokens": 300, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{draft_url}/v1/completions", json=body, timeout=300) as response:
        events = 0
        for line in response.iter_lines():
            events += line.startswith("data: ")
            if events == 50:
                break
    m = wait_until_idle(draft_url, timeout=60)
    assert m["tokenspout_slots_free"] == 4 and m["tokenspout_kv_cells_used"] == 0
    assert accepted(draft_url) > before
    # both contexts kept exact prefixes: the same request now is the plain loop's
    assert complete(draft_url, EDIT, 70) == complete(plain_url, EDIT, 70)


# -- in process: the draft slots' cells -------------------------------------------------------------
Scenario = Callable[[Engine], Awaitable[None]]


def run(model_path: str, draft: str | None, scenario: Scenario) -> None:
    async def main() -> None:
        config = EngineConfig(
            model_path=model_path,
            n_ctx=8192,
            n_threads=1,
            deterministic=True,
            spec=SpecConfig(enabled=False, draft_p_min=0.0) if draft else OFF,
            draft_model_path=draft,
        )
        engine = Engine(config)
        engine.start()
        try:
            await scenario(engine)
        finally:
            engine.close()

    asyncio.run(main())


async def draft_slots(engine: Engine) -> list[tuple[int, ...]]:
    """The tokens each draft slot holds, read on the scheduler thread, once checked against the cells
    llama.cpp counts for it."""
    drafter = engine.drafter
    assert drafter is not None

    def read() -> list[tuple[int, ...]]:
        held = [tuple(tokens) for tokens in drafter.held]
        assert [drafter.context.cells(slot) for slot in range(len(held))] == [len(h) for h in held]
        return held

    result: Future[object] = Future()
    engine._scheduler.commands.put(Probe(read, result))
    slots = await asyncio.wrap_future(result)
    assert isinstance(slots, list)
    return slots


def holds_a_prefix_of(slots: list[tuple[int, ...]], tokens: tuple[int, ...], at_least: int) -> bool:
    """Whether some slot holds at least ``at_least`` tokens, all of them the first of ``tokens``."""
    return any(len(s) >= at_least and tokens[: len(s)] == s for s in slots)


@pytest.fixture(scope="module")
def plain_edit(model_path: str, bit_identity: None) -> Completion:
    result: list[Completion] = []

    async def scenario(engine: Engine) -> None:
        result.append(await engine.submit(greedy(engine, EDIT, 100)).collect())

    run(model_path, None, scenario)
    return result[0]


def test_a_finish_or_a_cancellation_inside_a_draft_leaves_both_contexts_exact(
    model_path: str, draft_path: str, plain_edit: Completion
) -> None:
    """max_tokens at every fourth length from 40 to 64 (the draft model's drafts, mostly accepted here,
    span them), then a cancellation after 50 tokens: the plain loop's tokens and logprobs, the target
    slot keeps the prompt's and answer's cells but the last token's (as the plain loop leaves it), the
    draft slot holds an exact prefix of prompt and answer, and the same request again is the plain
    loop's answer."""
    plain = trace(plain_edit)
    answer = tuple(t for t, _, _ in plain)

    async def scenario(engine: Engine) -> None:
        request = greedy(engine, EDIT, 100)
        prompt = request.prompt_tokens
        for n in range(40, 65, 4):
            got = await engine.submit(greedy(engine, EDIT, n)).collect()
            assert trace(got) == plain[:n], n
            cells = await engine.kv_cells()
            assert cells.used == 0 and cells.cached == len(prompt) + n - 1, n
            assert holds_a_prefix_of(await draft_slots(engine), prompt + answer, len(prompt)), n
        drafted, gained = (
            engine.stats().draft_tokens["draft_model"],
            engine.stats().draft_tokens_accepted["draft_model"],
        )
        assert drafted > gained > drafted / 2 > 50
        handle = engine.submit(request)
        seen = await first_tokens(handle, 50)
        handle.cancel()
        cells = await engine.kv_cells()  # queued behind the cancellation: the slot is free by then
        assert engine.stats().free_slots == 4 and cells.used == 0
        assert seen == list(answer[:50])
        assert holds_a_prefix_of(await draft_slots(engine), prompt + answer, len(prompt) + 30)
        again = await engine.submit(request).collect()
        assert trace(again) == plain

    run(model_path, draft_path, scenario)
