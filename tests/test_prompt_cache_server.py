"""The prompt cache over HTTP: real servers, the openai SDK, and a cold server as the reference.

In ``--deterministic`` mode a warm cache must give the bits a cold prefill gives, so every reuse is
checked against a freshly started server whose own ``cached_tokens`` prove it computed everything.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engine.prompt_cache import common_prefix
from tests.conftest import ServerFactory
from tests.helpers import metrics, wait_until_idle

# Long enough that a slot's cells are worth saving to RAM (64 tokens or more).
TOOLS = "Tools: " + " ".join(
    f"tool_{i}(city, date) gives the weather of a city on a date." for i in range(12)
)
STORY = "In the year 1850 a lighthouse keeper named Elias lived on a small island with his dog. " * 6


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


class Reply:
    def __init__(self, text: str, trace: list[tuple[str, float]], prompt_tokens: int, cached: int) -> None:
        self.text, self.trace, self.prompt_tokens, self.cached = text, trace, prompt_tokens, cached


def complete(url: str, prompt: str, n: int = 12) -> Reply:
    """A greedy completion with every token's logprob (which exposes any change in the logits)."""
    reply = sdk(url).completions.create(
        model="m", prompt=prompt, max_tokens=n, temperature=0, logprobs=0, extra_body={"ignore_eos": True}
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs and logprobs.tokens and logprobs.token_logprobs and reply.usage
    details = reply.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    trace = list(zip(logprobs.tokens, logprobs.token_logprobs, strict=True))
    return Reply(reply.choices[0].text, trace, reply.usage.prompt_tokens, details.cached_tokens)


def chat(url: str, messages: list[ChatCompletionMessageParam], n: int = 24) -> Reply:
    reply = sdk(url).chat.completions.create(
        model="m", messages=messages, max_tokens=n, temperature=0, logprobs=True
    )
    choice = reply.choices[0]
    assert choice.logprobs and choice.logprobs.content and reply.usage and reply.usage.prompt_tokens_details
    trace = [(t.token, t.logprob) for t in choice.logprobs.content]
    cached = reply.usage.prompt_tokens_details.cached_tokens or 0
    return Reply(str(choice.message.content), trace, reply.usage.prompt_tokens, cached)


def tokens(url: str, text: str) -> list[int]:
    return [t["id"] for t in httpx.post(f"{url}/tokenize", json={"inputs": text}, timeout=30).json()]


def cold(start_server: ServerFactory, *, chats: Any = (), prompts: Any = ()) -> list[Reply]:
    """Each request on a fresh deterministic server, in order; none of them may reuse a cell (their
    prompts share no first token, and the test checks that the server says it computed them all)."""
    with start_server("--deterministic", "--parallel", "1") as url:
        replies = [chat(url, m) for m in chats] + [complete(url, p) for p in prompts]
    assert all(r.cached == 0 for r in replies)
    return replies


@pytest.fixture(scope="module")
def warm_url(start_server: ServerFactory) -> Iterator[str]:
    """Two slots, deterministic: so that conversations must share and give up slots."""
    with start_server("--deterministic", "--parallel", "2") as url:
        yield url


@pytest.mark.usefixtures("bit_identity")
def test_turns_of_a_conversation_reuse_the_cache_and_match_a_cold_server(
    warm_url: str, start_server: ServerFactory
) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": TOOLS},
        {"role": "user", "content": "What can you do?"},
    ]
    replies = []
    for question in ("And in Paris?", "Thanks. One more time, please."):
        replies.append(chat(warm_url, messages))
        messages += [
            {"role": "assistant", "content": replies[-1].text},
            {"role": "user", "content": question},
        ]
    last = chat(warm_url, messages)
    replies.append(last)
    for before, after in itertools.pairwise(replies):
        # the whole earlier prompt at least (and the answer's cells, up to where the template's
        # rendering of it departs from the generated tokens) came from the cache
        assert after.cached >= before.prompt_tokens and after.cached < after.prompt_tokens
    (reference,) = cold(start_server, chats=[messages])
    assert last.text == reference.text and last.trace == reference.trace  # bit for bit


def test_two_interleaved_conversations_keep_their_slots(warm_url: str) -> None:
    wait_until_idle(warm_url)
    a = f"{STORY} Question A: what did Elias eat?"
    b = f"{TOOLS} Question B: which tool tells the weather in Rome?"
    first_a, first_b = complete(warm_url, a), complete(warm_url, b)
    for turn in range(2):
        a += f"{first_a.text} Next question A{turn}:"
        b += f"{first_b.text} Next question B{turn}:"
        next_a, next_b = complete(warm_url, a), complete(warm_url, b)
        assert next_a.cached >= first_a.prompt_tokens and next_b.cached >= first_b.prompt_tokens
        first_a, first_b = next_a, next_b
    m = metrics(warm_url)
    assert m["tokenspout_prompt_tokens_cached_total"] > 0 and m["tokenspout_prompt_tokens_computed_total"] > 0


@pytest.mark.usefixtures("bit_identity")
def test_a_shared_system_prompt_is_reused_and_nothing_after_it(
    warm_url: str, start_server: ServerFactory
) -> None:
    first = f"{TOOLS} Question: is it raining in Oslo today?"
    second = f"{TOOLS} Question: how warm will Lisbon be tomorrow?"
    complete(warm_url, first)
    reply = complete(warm_url, second)
    shared = common_prefix(tokens(warm_url, first), tokens(warm_url, second))
    assert shared > 100 and reply.cached == shared  # exactly the common prefix, not one cell more
    (reference,) = cold(start_server, prompts=[second])
    assert reply.trace == reference.trace


@pytest.mark.usefixtures("bit_identity")
def test_a_prompt_that_diverges_in_the_middle_never_continues_the_other_cells(
    warm_url: str, start_server: ServerFactory
) -> None:
    original = f"{STORY} His dog was called Max. {STORY} The end."
    changed = f"{STORY} His dog was called Rex. {STORY} The end."
    complete(warm_url, original)
    reply = complete(warm_url, changed)
    shared = common_prefix(tokens(warm_url, original), tokens(warm_url, changed))
    assert 0 < reply.cached == shared < reply.prompt_tokens - 50
    (reference,) = cold(start_server, prompts=[changed])
    assert reply.trace == reference.trace


@pytest.mark.usefixtures("bit_identity")
def test_a_conversation_comes_back_from_ram_after_its_slot_was_taken(start_server: ServerFactory) -> None:
    conversation = f"{STORY} Question: what was the keeper's name?"
    with start_server("--deterministic", "--parallel", "1") as url:
        first = complete(url, conversation)
        other = complete(url, f"{TOOLS} Question: which tool?")  # takes the only slot
        assert other.cached == 0
        saved = metrics(url)
        assert saved["tokenspout_prompt_cache_entries"] == 1 and saved["tokenspout_prompt_cache_bytes"] > 0
        follow_up = f"{conversation}{first.text} And his dog?"
        back = complete(url, follow_up)
        assert back.cached >= first.prompt_tokens  # restored from RAM, not prefilled again
        assert metrics(url)["tokenspout_prompt_cache_entries"] == 2  # the tools prompt was saved too
    (reference,) = cold(start_server, prompts=[follow_up])
    assert back.trace == reference.trace


def test_the_ram_budget_is_honoured(start_server: ServerFactory) -> None:
    budget_mib = 2
    prompts = [f"Story {i}: {STORY}" for i in range(4)]  # ~110 tokens: ~1.3 MB each with Q8_0 cells
    with start_server("--deterministic", "--parallel", "1", "--cache-ram", str(budget_mib)) as url:
        for prompt in prompts:
            complete(url, prompt)
            m = metrics(url)
            assert m["tokenspout_prompt_cache_bytes"] <= budget_mib << 20
        assert m["tokenspout_prompt_cache_entries"] == 1  # only the newest saved state fits: prompts[2]
        # Restored from RAM, although saving the slot's prompts[3] first evicts that very entry; then
        # prompts[3], saved by that restore, comes back the same way.
        assert complete(url, prompts[2] + " More.").cached > 100
        assert complete(url, prompts[3] + " More.").cached > 100
        assert complete(url, prompts[0] + " More.").cached < 20  # evicted long ago: prefilled again
        assert metrics(url)["tokenspout_prompt_cache_bytes"] <= budget_mib << 20


def test_cache_ram_0_saves_nothing_but_a_slot_still_keeps_its_cells(start_server: ServerFactory) -> None:
    with start_server("--parallel", "1", "--cache-ram", "0") as url:
        first = complete(url, STORY)
        assert complete(url, STORY + " Then?").cached >= first.prompt_tokens - 1
        complete(url, TOOLS)
        assert complete(url, STORY + " Again?").cached < 20
        m = wait_until_idle(url)
        assert m["tokenspout_prompt_cache_bytes"] == 0 and m["tokenspout_prompt_cache_entries"] == 0
        assert m["tokenspout_kv_cells_used"] == 0 and m["tokenspout_kv_cells_cached"] > 0


def test_a_default_server_takes_a_6000_token_prompt_and_streams(base_url: str) -> None:
    info = httpx.get(f"{base_url}/info", timeout=30).json()
    assert info["max_input_tokens"] >= 6000  # the model's trained context, not ctx / 4
    prompt = "The lighthouse keeper wrote in his log every night. " * 560
    n_prompt = len(tokens(base_url, prompt))
    assert 5500 <= n_prompt <= info["max_input_tokens"]
    stream = sdk(base_url).completions.create(
        model="m", prompt=prompt, max_tokens=8, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    pieces = [c.choices[0].text for c in stream if c.choices]
    assert len(pieces) >= 2 and "".join(pieces)
