"""OpenAI-compatible streaming against the real model, a real server and real clients."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.helpers import metrics, wait_until_idle

CHAT = "/v1/chat/completions"


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def stream_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[tuple[float, str]]:
    """(arrival time, data) of every SSE event, through httpx-sse."""
    out = []
    with connect_sse(client, "POST", path, json={**body, "stream": True}) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert source.response.headers["cache-control"] == "no-cache"
        assert source.response.headers["x-accel-buffering"] == "no"
        for event in source.iter_sse():
            out.append((time.perf_counter(), event.data))
    return out


def chat_text(base_url: str, prompt: str, **params: Any) -> str:
    reply = sdk(base_url).chat.completions.create(model="any", messages=user(prompt), stream=False, **params)
    return str(reply.choices[0].message.content)


def streamed_chat_text(base_url: str, prompt: str, **params: Any) -> tuple[str, list[str]]:
    pieces = []
    stream = sdk(base_url).chat.completions.create(model="any", messages=user(prompt), stream=True, **params)
    chunk: ChatCompletionChunk
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    return "".join(pieces), pieces


def test_tokens_arrive_one_by_one_not_all_at_the_end(client: httpx.Client) -> None:
    sent = time.perf_counter()
    body = {"messages": user("Tell me a long story."), "max_tokens": 64, "temperature": 0, "ignore_eos": True}
    events = stream_events(client, CHAT, body)
    content = [(t, d) for t, d in events if d != "[DONE]" and json.loads(d)["choices"]]
    # one chunk per token that carries text: an end-of-generation token that ignore_eos passes over
    # carries none (Qwen2.5 writes several in 64 tokens), nor does the first part of a split character
    assert len(content) >= 48
    first, last = content[0][0], content[-1][0]
    # 64 tokens take a visible while to decode; streamed, the first one is there long before the last
    assert first - sent < 0.5 * (last - sent)
    # many distinct arrival moments, not one burst; a step's tokens come together, and speculation's
    # steps carry several (Qwen2.5 repeating itself past an ignored end: 21 moments for 57 chunks)
    assert len({round(t, 3) for t, _ in content}) > 12


def test_chunk_format_role_finish_reason_usage_and_done(base_url: str, client: httpx.Client) -> None:
    chunks = list(
        sdk(base_url).chat.completions.create(
            model="whatever-the-client-calls-it",
            messages=user("Say hello."),
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert (
        usage_chunk.usage.total_tokens
        == usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens
    )
    details = usage_chunk.usage.prompt_tokens_details
    assert details is not None and 0 <= (details.cached_tokens or 0) < usage_chunk.usage.prompt_tokens
    raw = stream_events(client, CHAT, {"messages": user("Say hello."), "max_tokens": 4})
    assert raw[-1][1] == "[DONE]"
    assert all(json.loads(d).get("usage") is None for _, d in raw[:-1])  # no usage chunk unless asked


def test_non_streamed_answer_carries_usage_and_echoes_the_model_name(base_url: str) -> None:
    reply = sdk(base_url).chat.completions.create(
        model="gpt-4o", messages=user("Say hello."), max_tokens=8, temperature=0
    )
    assert reply.object == "chat.completion" and reply.model == "gpt-4o"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0
    assert [m.id for m in sdk(base_url).models.list().data]


@pytest.mark.parametrize("mode", ["fast", "deterministic"])
def test_greedy_streamed_text_equals_non_streamed_text(mode: str, request: pytest.FixtureRequest) -> None:
    # The second of two identical requests finds the first one's cells in the prompt cache: the text
    # must not change with it, in either mode.
    base_url = request.getfixturevalue("base_url" if mode == "fast" else "deterministic_url")
    prompt = "Explain in three sentences why the sky is blue."
    whole = chat_text(base_url, prompt, max_tokens=60, temperature=0)
    streamed, _ = streamed_chat_text(base_url, prompt, max_tokens=60, temperature=0)
    assert streamed == whole and len(whole) > 20
    again = sdk(base_url).chat.completions.create(
        model="any", messages=user(prompt), max_tokens=60, temperature=0, stream=False
    )
    assert again.choices[0].message.content == whole
    assert again.usage and again.usage.prompt_tokens_details
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    completion = sdk(base_url).completions.create(
        model="m", prompt="The three primary colors are", max_tokens=30, temperature=0
    )
    pieces = [
        c.choices[0].text
        for c in sdk(base_url).completions.create(
            model="m", prompt="The three primary colors are", max_tokens=30, temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces) == completion.choices[0].text


def token_trace(
    base_url: str, prompt: str, max_tokens: int, stream: bool, sampling: dict[str, Any]
) -> list[tuple[str, float]]:
    """(token, logprob) of every generated token: logprobs expose any change in a row's logits."""
    params: dict[str, Any] = {"max_tokens": max_tokens, "logprobs": True, **sampling}
    create = sdk(base_url).chat.completions.create
    if not stream:
        reply = create(model="any", messages=user(prompt), stream=False, **params)
        assert reply.choices[0].logprobs and reply.choices[0].logprobs.content
        return [(t.token, t.logprob) for t in reply.choices[0].logprobs.content]
    trace: list[tuple[str, float]] = []
    for chunk in create(model="any", messages=user(prompt), stream=True, **params):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            trace.extend((t.token, t.logprob) for t in chunk.choices[0].logprobs.content)
    return trace


# Different lengths, so that neighbours finish and leave while the others still decode, and one
# prompt of over 256 tokens, whose attention spans more than one block of 256 cells.
BATCHED_CASES = [
    ("Name three fruits.", 8),
    ("What is the capital of Italy?", 48),
    ("Summarize in one sentence: " + "The river flows past the old mill and the quiet town. " * 25, 32),
    ("Count from one to five in words.", 20),
]


@pytest.mark.usefixtures("bit_identity")
@pytest.mark.parametrize(
    "sampling", [{"temperature": 0}, {"temperature": 0.9, "seed": 7}], ids=["greedy", "seeded"]
)
def test_four_requests_batched_together_match_each_alone(
    deterministic_url: str, sampling: dict[str, Any]
) -> None:
    base_url = deterministic_url
    alone = [token_trace(base_url, prompt, n, False, sampling) for prompt, n in BATCHED_CASES]
    for _ in range(2):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            streams = [pool.submit(token_trace, base_url, p, n, True, sampling) for p, n in BATCHED_CASES]
            together = [stream.result() for stream in streams]
        assert together == alone  # the same tokens with bit-identical logprobs
    assert len({tuple(trace) for trace in alone}) == 4


# Characters of several UTF-8 lengths; each vocabulary splits some of them into several tokens.
WIDE_CHARACTERS = {
    "emoji": ["🌊", "🐙", "🦑", "🪼"],
    "chinese": ["春", "鬱", "龘", "䨻"],
    "japanese": ["語", "纏", "鑓", "𠮷"],
}


def split_character(client: httpx.Client, candidates: list[str]) -> tuple[str, list[int]]:
    """The first candidate this model's vocabulary writes with several tokens, and those tokens."""
    for char in candidates:
        ids = [int(t["id"]) for t in client.post("/tokenize", json={"inputs": char}).json()]
        if len(ids) > 1:
            return char, ids
    pytest.fail(f"every one of {candidates} is a single token in this vocabulary")


@pytest.mark.parametrize("route", ["chat", "completions"])
@pytest.mark.parametrize("kind", sorted(WIDE_CHARACTERS))
def test_characters_split_across_tokens_stream_whole(
    base_url: str, client: httpx.Client, kind: str, route: str
) -> None:
    """Whatever the model would say: a bias of +100 on the tokens that together write one wide
    character leaves the model only those tokens to choose from, and a prompt full of that character
    makes it put them in order. So tokens that end mid-character are generated, and each must be held
    until its character is whole."""
    char, ids = split_character(client, WIDE_CHARACTERS[kind])
    prompt = f"Repeat this line exactly: {char * 30}"
    body: dict[str, Any] = {
        "max_tokens": 24,
        "temperature": 0,
        "logit_bias": {str(t): 100 for t in ids},
        "ignore_eos": True,
    }
    path = CHAT if route == "chat" else "/v1/completions"
    body |= {"messages": user(prompt)} if route == "chat" else {"prompt": prompt}
    events = stream_events(client, path, body)  # httpx decodes every event as UTF-8 and JSON
    choices = [json.loads(d)["choices"] for _, d in events[:-1]]
    if route == "chat":
        pieces = [c[0]["delta"].get("content") or "" for c in choices if c]
    else:
        pieces = [c[0]["text"] for c in choices if c]
    whole = client.post(path, json=body).json()["choices"][0]
    whole_text = whole["message"]["content"] if route == "chat" else whole["text"]
    assert "".join(pieces) == whole_text
    assert whole_text.count(char) >= 24 // len(ids) - 1  # the character, over and over
    assert "\ufffd" not in whole_text  # no character was cut: every piece held whole characters
    assert all("\ufffd" not in p for p in pieces)


def tokens_of(base_url: str, prompt: str, n: int) -> tuple[str, list[str]]:
    reply = sdk(base_url).completions.create(
        model="m", prompt=prompt, max_tokens=n, temperature=0, logprobs=0
    )
    assert reply.choices[0].logprobs is not None and reply.choices[0].logprobs.tokens is not None
    return reply.choices[0].text, reply.choices[0].logprobs.tokens


def test_stop_string_split_across_tokens_is_honoured_and_not_sent(base_url: str) -> None:
    prompt = "The history of the Roman Empire began"
    text, tokens = tokens_of(base_url, prompt, 40)
    # a stop string made of the end of one token and the start of the next
    k = next(
        i
        for i in range(3, len(tokens) - 1)
        if len(tokens[i].strip()) >= 2 and len(tokens[i + 1].strip()) >= 2
    )
    offset = sum(len(t) for t in tokens[:k])
    stop = tokens[k][-2:] + tokens[k + 1][:2]
    expected = text[: text.index(stop)]
    assert text.index(stop) <= offset + len(tokens[k]) - 2  # it really starts inside token k
    for streamed in (False, True):
        client = sdk(base_url)
        if streamed:
            chunks = list(
                client.completions.create(
                    model="m", prompt=prompt, max_tokens=40, temperature=0, stop=[stop], stream=True
                )
            )
            got = "".join(c.choices[0].text for c in chunks if c.choices)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            reply = client.completions.create(
                model="m", prompt=prompt, max_tokens=40, temperature=0, stop=[stop]
            )
            got, reason = reply.choices[0].text, reply.choices[0].finish_reason
        assert got == expected and stop not in got and reason == "stop"


def test_max_tokens_is_exact(base_url: str, client: httpx.Client) -> None:
    body = {
        "prompt": "Once upon a time",
        "max_tokens": 17,
        "ignore_eos": True,
        "logprobs": 0,
        "stream_options": {"include_usage": True},
    }
    events = [json.loads(d) for _, d in stream_events(client, "/v1/completions", body)[:-1]]
    tokens = [e for e in events if e["choices"]]
    assert len(tokens) == 17  # with logprobs every token gets its own chunk
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 17
    reply = sdk(base_url).completions.create(
        model="m", prompt="Once upon a time", max_tokens=17, extra_body={"ignore_eos": True}
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 17


def test_closing_a_stream_frees_its_slot_and_kv_cells(base_url: str) -> None:
    wait_until_idle(base_url)
    body = {
        "messages": user("Write a very long essay."),
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.Client(base_url=base_url, timeout=60) as c, c.stream("POST", CHAT, json=body) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        assert metrics(base_url)["tgi_batch_current_size"] == 1
        closed = time.perf_counter()
    after = wait_until_idle(base_url)
    assert after["tokenspout_requests_admitted"] == 0 and after["tokenspout_kv_cells_used"] == 0
    assert time.perf_counter() - closed < 5
    assert chat_text(base_url, "Hi", max_tokens=3, temperature=0)  # and the server serves the next request


def test_curl_shows_chunks_as_they_arrive(base_url: str) -> None:
    body = json.dumps(
        # Greedy, so that the 40 tokens are the same every run: a sampled end-of-generation or partial
        # UTF-8 token carries no text and therefore sends no chunk.
        {
            "messages": user("Tell me a story."),
            "max_tokens": 40,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
        }
    )
    curl = subprocess.Popen(
        ["curl", "-sN", f"{base_url}{CHAT}", "-H", "Content-Type: application/json", "-d", body],
        stdout=subprocess.PIPE,
    )
    assert curl.stdout is not None
    arrivals = [time.perf_counter() for line in curl.stdout if line.startswith(b"data: ")]
    assert curl.wait() == 0
    assert len(arrivals) >= 40
    assert arrivals[-1] - arrivals[0] > 0.1  # spread over the generation, not one buffered burst


def test_requests_beyond_the_slots_queue_and_drain(start_server: Any) -> None:
    with start_server("--parallel", "2") as url:
        results: list[str] = []
        seen_queue = threading.Event()

        def watch() -> None:
            deadline = time.monotonic() + 30
            while not seen_queue.is_set() and time.monotonic() < deadline:
                m = metrics(url)
                if m["tgi_queue_size"] > 0 and m["tgi_batch_current_size"] == 2:
                    seen_queue.set()
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(
                pool.map(
                    lambda i: chat_text(
                        url, f"Say the number {i}.", max_tokens=30, extra_body={"ignore_eos": True}
                    ),
                    range(6),
                )
            )
        watcher.join()
        assert seen_queue.is_set()
        assert all(results) and len(results) == 6
        final = wait_until_idle(url)
        assert final["tgi_queue_size"] == 0 and final["tokenspout_slots_free"] == 2
        assert final["tgi_request_success"] == 6
